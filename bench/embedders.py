"""Embedding backends side by side on real chunks: speed, and how close their vectors are to torch's.

    python bench/embedders.py [--data ../shared/data/pydocs-faq-dev] [--texts 400] [--threads 2] [--ort-optimizer]
                              [--json]

The texts are the first corpus sections chunked exactly as the pipeline does (200 tokens, contextual
header). Backends: torch (sentence-transformers, the reference), ONNX float32 as ragbus runs it (a batch
across texts, one core each) and as it ran before (one text after another on intra-op threads), ONNX
int8 as ragbus exports it (MatMul weights per output channel, the feed-forward down-projections left in
float32), int8 on every MatMul per channel, and onnxruntime's default dynamic quantisation (every
supported operator, one scale per tensor), to show why ragbus uses neither of the last two.
Speed is chunks/s on an otherwise idle machine; cosine is each vector against torch's for the same text.
Retrieval quality of a backend is bench/retrieval.py's job (RAGBUS_EMBEDDER_BACKEND=onnx|torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the ONNX export `make install` made, not one per temporary data directory
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from bench.report import run_facts
from chunking.splitter import Chunker, embedding_text
from infra.models.embedder import SentenceTransformerEmbedder, load_tokenizer, model_dir
from infra.models.onnx_embedder import OnnxModel, ensure_exported
from infra.settings import EmbedderSettings, Settings
from schemas.events import ContentType

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/pydocs-faq-dev"


def corpus_texts(data: Path, n: int) -> list[str]:
    settings = Settings()
    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    texts: list[str] = []
    with (data / "corpus.jsonl").open() as fh:
        for line in fh:
            doc = json.loads(line)
            texts += [embedding_text(doc["title"], c.section_path, c.text)
                      for c in chunker.chunk(ContentType.TEXT, doc["text"])]
            if len(texts) >= n:
                return texts[:n]
    return texts


def quantized(fp32_dir: Path, work: Path, name: str, **options: Any) -> Path:
    """Another dynamic int8 quantisation of ragbus's float32 export, for comparison."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = work / name
    target.mkdir()
    quantize_dynamic(str(fp32_dir / "model.onnx"), str(target / "model.onnx"), weight_type=QuantType.QInt8,
                     **options)
    for file in ("tokenizer.json", "meta.json"):
        shutil.copy(fp32_dir / file, target / file)
    return target


def eager_export(fp32_dir: Path, work: Path, *, fused: bool) -> Path:
    """The float32 export again, with the transformer's eager attention instead of SDPA (the form ONNX Runtime's
    transformer optimizer recognises), and with `fused` run through that optimizer (Attention,
    EmbedLayerNormalization, SkipLayerNormalization and BiasGelu fused), for comparison."""
    import shutil

    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from sentence_transformers import SentenceTransformer

    from infra.models.onnx_embedder import _export_graph

    st = SentenceTransformer(str(model_dir("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)
    auto = getattr(st[0], "auto_model")  # noqa: B009  # not in the stubs' type
    auto.config._attn_implementation = "eager"
    target = work / ("eager-fused" if fused else "eager")
    target.mkdir()
    for file in ("tokenizer.json", "meta.json"):
        shutil.copy(fp32_dir / file, target / file)
    _export_graph(torch, auto, target / "model.onnx")
    if fused:
        config = auto.config
        optimized = optimize_model(str(target / "model.onnx"), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=1, use_gpu=False)
        optimized.save_model_to_file(str(target / "model.onnx"))
    return target


def timed(embed: Callable[[Sequence[str]], Any], texts: list[str]) -> tuple[np.ndarray[Any, Any], float]:
    embed(texts[:8])  # warm-up
    started = time.perf_counter()
    vectors = np.asarray(embed(texts), dtype=np.float32)
    return vectors, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(os.environ["RAGBUS_EMBEDDER_ONNX_DIR"]),
                    help="where ONNX exports are cached")
    ap.add_argument("--ort-optimizer", action="store_true",
                    help="also the float32 export with eager attention, plain and through ONNX Runtime's "
                         "transformer optimizer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    texts = corpus_texts(args.data, args.texts)
    torch_model = SentenceTransformerEmbedder(EmbedderSettings(backend="torch", threads=args.threads))
    reference, torch_s = timed(torch_model.embed, texts)
    rows = {"torch": {"chunks_per_s": len(texts) / torch_s, "speedup": 1.0, "cos_min": 1.0, "cos_p1": 1.0,
                      "cos_mean": 1.0}}
    fp32_dir = ensure_exported(EmbedderSettings(backend="onnx", onnx_int8=False), args.cache)
    int8_dir = ensure_exported(EmbedderSettings(backend="onnx", onnx_int8=True), args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {
            "onnx-fp32, one text at a time on intra-op threads (before)": fp32_dir,
            "onnx-fp32": fp32_dir,
            "onnx-int8 ragbus (MatMul/channel, FFN-out fp32)": int8_dir,
            "onnx-int8 every MatMul, per channel": quantized(fp32_dir, work, "all-matmul", per_channel=True,
                                                              op_types_to_quantize=["MatMul"]),
            "onnx-int8 onnxruntime defaults": quantized(fp32_dir, work, "defaults"),
        }
        if args.ort_optimizer:
            variants["onnx-fp32, eager-attention export"] = eager_export(fp32_dir, work, fused=False)
            variants["onnx-fp32, eager export + ORT transformer optimizer"] = eager_export(fp32_dir, work, fused=True)
        for name, path in variants.items():
            model = OnnxModel(path, args.threads)
            if "(before)" in name:  # every call takes the lone-text path: what OnnxModel did for batches too
                model.BATCH_MIN = 1 << 30
            vectors, seconds = timed(model.embed, texts)
            cos = (vectors * reference).sum(axis=1)
            rows[name] = {"chunks_per_s": len(texts) / seconds, "speedup": torch_s / seconds,
                          "cos_min": float(cos.min()), "cos_p1": float(np.percentile(cos, 1)),
                          "cos_mean": float(cos.mean())}
    report = {"texts": len(texts), "threads": args.threads, "model": str(model_dir("all-MiniLM-L6-v2").name),
              "backends": {k: {m: round(v, 4) for m, v in r.items()} for k, r in rows.items()},
              **run_facts()}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{len(texts)} chunks, {args.threads} threads")
    print(f"{'backend':<48} {'chunks/s':>9} {'speedup':>8} {'cos min':>8} {'cos p1':>8} {'cos mean':>9}")
    for name, r in rows.items():
        print(f"{name:<48} {r['chunks_per_s']:>9.1f} {r['speedup']:>8.2f} {r['cos_min']:>8.4f} {r['cos_p1']:>8.4f} "
              f"{r['cos_mean']:>9.4f}")


if __name__ == "__main__":
    main()
