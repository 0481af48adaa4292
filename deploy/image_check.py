"""Run at image build time (Dockerfile) and by tests/deploy/test_image.py: the installed image can do its work
offline. The packaged embedding model loads without a hub and embeds, its ONNX export is there and embeds the
same (cosine >= 0.99), every backend adapter of the
`ragbus[all]` image imports, and the command line loads.

    HF_HUB_OFFLINE=1 python deploy/image_check.py
"""

from __future__ import annotations

import importlib
import os
import sys


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from infra.models.embedder import SentenceTransformerEmbedder, embedding_dim
    from infra.settings import EmbedderSettings

    settings = EmbedderSettings()
    embedder = SentenceTransformerEmbedder(settings)
    vectors = embedder.embed(["ragbus checks its image"])
    if vectors.shape != (1, embedding_dim(settings.model)):
        print(f"image check: the model embeds to {vectors.shape}, expected (1, {embedding_dim(settings.model)})",
              file=sys.stderr)
        return 1
    # the default backend: the ONNX export made at build time (never made here), same vectors as torch's
    from infra.models.onnx_embedder import OnnxEmbedder, exported_dir
    from infra.settings import Settings

    full = Settings()
    path = exported_dir(full.embedder, full.onnx_dir())
    if not (path / "meta.json").exists():
        print(f"image check: no ONNX export at {path}: run `ragbus embedder export` in the build", file=sys.stderr)
        return 1
    onnx = OnnxEmbedder(full.embedder, full.onnx_dir()).embed(["ragbus checks its image"])
    cosine = float((onnx @ vectors.T)[0, 0])
    if cosine < 0.99:
        print(f"image check: the ONNX export's vector has cosine {cosine:.4f} to torch's (< 0.99)", file=sys.stderr)
        return 1
    for module in ("infra.stores.weaviate", "infra.stores.mongo", "infra.models.claude", "infra.stores.lance",
                   "infra.kafka.faust_runner", "ragbus.cli"):
        importlib.import_module(module)
    print(f"image check: {settings.model} loaded offline ({vectors.shape[1]} dimensions); ONNX export at {path} "
          f"(cosine {cosine:.4f} to torch); adapters import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
