"""Tiny models the tests build themselves (no download): a cross-encoder with random weights and a
word-level tokenizer over the words the tests use. What it scores means nothing; that it loads and runs
through the real sentence-transformers `CrossEncoder` is what the tests need."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_cross_encoder(path: Path, texts: Iterable[str], seed: int = 7) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})
    vocab = {w: i for i, w in enumerate([*SPECIAL, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=128).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def build_sentence_transformer(path: Path, texts: Iterable[str], out_dim: int = 8, seed: int = 7) -> Path:
    """A tiny sentence-transformers model (BERT, mean pooling, a Dense layer to `out_dim`, normalise)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel

    base = build_cross_encoder(path / "base", texts, seed)  # reuse its tokenizer; replace its weights
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(__import__("json").loads((base / "tokenizer.json").read_text())["model"]
                                       ["vocab"]), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    BertModel(config).save_pretrained(base)
    transformer = models.Transformer(str(base), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, models.Pooling(16, "mean"),
                                         models.Dense(16, out_dim, activation_function=torch.nn.Tanh()),
                                         models.Normalize()], device="cpu")
    model.save(str(path / "model"))
    return path / "model"
