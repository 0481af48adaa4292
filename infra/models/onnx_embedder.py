"""The sentence-transformers model on ONNX Runtime: the same vector space as torch's, faster on a CPU.

The model (all-MiniLM-L6-v2, or any sentence-transformers directory with mean pooling) is exported once,
offline, from its own weights: the transformer, its mean pooling and the L2 normalisation become one ONNX
graph. By default it stays float32: the same vectors as torch's, and faster than torch because a batch runs
across texts, one text per core (OnnxModel). With RAGBUS_EMBEDDER_ONNX_INT8=true its MatMul weights are
quantised to int8 per output channel (dynamic quantisation; activations are quantised per run), except the
feed-forward down-projections, which stay float32. It stays opt-in: on an AVX-512 VNNI Xeon its vectors kept
cosine >= 0.99 to torch's but the dev set's nDCG@10 dropped by 0.026; on an AVX2-only EPYC (no VNNI, where
ONNX Runtime's u8s8 arithmetic saturates) the worst vector fell to cosine 0.989 and it was only 1.1x
float32's speed (bench/RESULTS.md, issue 13). A plain int8 quantisation of every operator moves vectors
too far (cosine to torch's down to ~0.88 on real text); bench/embedders.py measures them side by side.
Every export checks its own vectors against the torch model on probe texts and refuses to cache a model
that drifted.

The exported model is cached by the weights' digest and the export recipe in
`RAGBUS_EMBEDDER_ONNX_DIR` (default: `<data dir>/models`), so it is built once per machine or image;
`ragbus embedder export` builds it ahead of time (an image build step), several processes starting at
once build it once (a file lock). Exporting needs torch and sentence-transformers; running needs only
onnxruntime, tokenizers and numpy.

Each text is run alone (a batch of one, no padding): with dynamic quantisation the activation scales depend
on the whole input tensor, so a text batched with others would get a slightly different vector, and
ragbus's vectors must not depend on what else was in the micro-batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from infra.models.embedder import model_dir
from infra.settings import EmbedderSettings
from kernel.errors import ConfigurationError
from kernel.ports import Vectors

#: Changes whenever the export or the quantisation changes, so an older cached model is not reused.
RECIPE = "onnx-meanpool-l2-opset17-int8-matmul-perchannel-ffnout-fp32-v2"
#: The export refuses a model whose vectors are further than this from torch's on the probe texts.
MIN_COSINE = 0.99
PROBE_TEXTS = (
    "Kafka keeps the order of messages within one partition, not across partitions.",
    "How do I make a consumer commit its offsets only after the batch was written?",
    "def embed(texts):\n    return model.encode(texts, normalize_embeddings=True)",
    "Penguins huddle together to stay warm during the Antarctic winter.",
    "Die Konfiguration wird beim Start einmal gelesen und danach nicht mehr verändert.",
)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _digest(src: Path, quantize: bool) -> str:
    h = hashlib.sha256(f"{RECIPE}\x1fint8={quantize}".encode())
    for name in sorted(p.name for p in src.iterdir() if p.is_file()):
        if name.endswith((".safetensors", ".bin", ".json", ".txt")):
            h.update(name.encode())
            with (src / name).open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def exported_dir(settings: EmbedderSettings, cache_dir: Path) -> Path:
    """Where the model `settings` selects is (or will be) cached."""
    src = model_dir(settings.model)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.model.rsplit("/", 1)[-1])
    return cache_dir / f"{slug}-{'int8' if settings.onnx_int8 else 'fp32'}-{_digest(src, settings.onnx_int8)}"


def ensure_exported(settings: EmbedderSettings, cache_dir: Path) -> Path:
    """The cached export for these settings, exporting it first if needed (once, under a file lock)."""
    target = exported_dir(settings, cache_dir)
    if (target / "meta.json").exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / f".{target.name}.lock"):
            if not (target / "meta.json").exists():
                export(model_dir(settings.model), target, int8=settings.onnx_int8)
    except PermissionError as exc:  # e.g. an image's read-only model directory that lacks this variant
        raise ConfigurationError(
            f"the ONNX model {target.name} is not exported and RAGBUS_EMBEDDER_ONNX_DIR ({cache_dir}) is not "
            f"writable ({exc.strerror}): run `ragbus embedder export` with these settings where it is, or point "
            "RAGBUS_EMBEDDER_ONNX_DIR at a writable directory") from exc
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export(src: Path, target: Path, *, int8: bool) -> None:
    """Export `src` (a sentence-transformers directory) to `target`, checked against torch on probe texts."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigurationError(
            "the ONNX embedder's model is not exported yet and exporting it needs torch and "
            "sentence-transformers (pip install 'ragbus[torch]'); run `ragbus embedder export` where they are "
            "installed and copy the result into RAGBUS_EMBEDDER_ONNX_DIR, or set RAGBUS_EMBEDDER_BACKEND=torch"
        ) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    pooling: dict[str, Any] = getattr(st[1], "get_config_dict")() if len(st) > 1 else {}  # noqa: B009
    mean = pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens")  # ST 6 / older
    if not mean or len(st) != 3 or type(st[2]).__name__ != "Normalize":
        raise ConfigurationError(f"{src}: the ONNX backend supports Transformer + mean Pooling + Normalize models only")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        fp32 = work / "model-fp32.onnx"
        _export_graph(torch, getattr(st[0], "auto_model"), fp32)  # noqa: B009  # not in the stubs' type
        final = work / "model.onnx"
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(final), per_channel=True, op_types_to_quantize=["MatMul"],
                             weight_type=QuantType.QInt8, nodes_to_exclude=_ffn_down_projections(fp32))
            fp32.unlink()
        else:
            fp32.rename(final)
        shutil.copy(src / "tokenizer.json", work / "tokenizer.json")
        meta = {"recipe": RECIPE, "int8": int8, "max_seq_length": int(st.max_seq_length or 0),
                "dim": embedding_dim_of(st), "source": str(src)}
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        reference = st.encode(list(PROBE_TEXTS), normalize_embeddings=True, convert_to_numpy=True)
        got = OnnxModel(work).embed(PROBE_TEXTS)
        cosine = float((np.asarray(reference) * got).sum(axis=1).min())
        if cosine < MIN_COSINE:
            raise ConfigurationError(f"the ONNX export of {src} drifted from torch (cosine {cosine:.4f} < "
                                     f"{MIN_COSINE}); set RAGBUS_EMBEDDER_ONNX_INT8=false or BACKEND=torch")
        meta["probe_min_cosine"] = round(cosine, 5)
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            work.rename(target)  # atomic: a reader sees no model or a whole one
        except OSError:  # another exporter finished first (no lock shared across machines): keep theirs
            if not (target / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ffn_down_projections(path: Path) -> list[str]:
    """The feed-forward blocks' second MatMul (intermediate -> hidden) of every layer: its input comes out of
    GELU with a long tail, so an int8 scale for the whole tensor crushes the many small values. Keeping
    these six in float32 took the worst cosine to torch on real chunks from 0.984 to 0.996."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name]


def embedding_dim_of(st: Any) -> int:
    get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension  # ST 6 / 5
    return int(get_dim() or 0)


def _export_graph(torch: Any, model: Any, path: Path) -> None:
    class Pooled(torch.nn.Module):  # type: ignore[misc]
        """The transformer, its mean pooling and the L2 norm as one graph."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"sentence_embedding": {0: "batch"}}
    # The TorchScript exporter: stable for BERT-style encoders with dynamic batch and sequence axes (torch
    # 2.13 deprecates it in favour of torch.export, which needs onnxscript); its deprecation and tracer
    # warnings are expected here, and the export is checked against torch's own vectors afterwards.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(model).eval(), (ids, ids, torch.zeros_like(ids)), str(path), input_names=list(INPUTS),
                          output_names=["sentence_embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)


class OnnxModel:
    """An exported model directory (model.onnx, tokenizer.json, meta.json) on ONNX Runtime.

    Two ways to use the cores, chosen by the size of the call. A lone text (a question) runs on one session
    whose operators use `threads` threads: lowest latency for one sequence. A batch of texts runs across
    texts instead: each text on a single thread of a second session (created on the first batch), `threads`
    texts at once (`run` is thread-safe and releases the GIL). One sequence of ~200 tokens is too small to
    split well across cores; independent texts scale with them (measured on 2 cores, bench/RESULTS.md: 30
    chunks/s against 26-27 with two intra-op threads, 18 for torch; a question: 6 ms with two intra-op
    threads, 9 ms with one). Both sessions run the same graph on the same text alone (no padding, no
    batch-mates), so a vector does not depend on what else was in the call, beyond float rounding (~1e-7).
    """

    #: Calls with at least this many texts run across texts (fewer: one after another on the lone session).
    BATCH_MIN = 4

    def __init__(self, path: Path, threads: int = 0) -> None:
        from tokenizers import Tokenizer

        meta = json.loads((path / "meta.json").read_text())
        self.dim = int(meta["dim"])
        self.max_tokens = int(meta["max_seq_length"])
        self.int8 = bool(meta["int8"])
        self.workers = threads or _cores()
        self._path = path / "model.onnx"
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.no_padding()
        self._lone = self._session(self.workers)
        self._batch: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._started = threading.Lock()

    def _session(self, intra_threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's worker threads spin after each run by default, burning a core for a while; the stages
        # share the machine's cores (the answerer's search threads run right after the question's embedding).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _run(session: Any, ids: list[int]) -> Vectors:
        batch = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": batch, "attention_mask": np.ones_like(batch), "token_type_ids": np.zeros_like(batch)}
        return np.asarray(session.run(None, feed)[0][0], dtype=np.float32)

    def _batch_session(self) -> tuple[Any, ThreadPoolExecutor]:
        with self._started:
            if self._pool is None:
                self._batch = self._session(1)
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ragbus-onnx")
            return self._batch, self._pool

    def embed(self, texts: Sequence[str]) -> Vectors:
        encoded = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        out = np.zeros((len(encoded), self.dim), dtype=np.float32)
        if self.workers == 1 or len(encoded) < self.BATCH_MIN:
            for i, ids in enumerate(encoded):
                out[i] = self._run(self._lone, ids)
            return out
        session, pool = self._batch_session()
        # longest first, so that the batch does not end waiting on one long text while the other cores idle
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        for i, vector in zip(order, pool.map(lambda i: self._run(session, encoded[i]), order), strict=True):
            out[i] = vector
        return out


def _cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxEmbedder:
    """The Embedder port on ONNX Runtime (see the module docstring)."""

    def __init__(self, settings: EmbedderSettings, cache_dir: Path) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = ensure_exported(settings, cache_dir)
        self._model = OnnxModel(path, settings.threads)
        #: The vectors differ slightly from torch's (and between export recipes), so the name, which keys
        #: the embedding cache, names the export: `all-MiniLM-L6-v2+onnx-int8@<digest>`.
        self.name = f"{settings.model}+onnx-{'int8' if self._model.int8 else 'fp32'}@{path.name.rsplit('-', 1)[-1][:8]}"
        self.dim = self._model.dim
        self.max_tokens = self._model.max_tokens

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self._model.embed(texts)
