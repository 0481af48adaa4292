"""A second retrieval evaluation set from a different kind of text: Debian package descriptions.

    python bench/packages_set.py [--lists DIR] [--sizes 2000,20000] [--out bench/out]

Documents are packages' long descriptions (title: the package name); two query sets, in BEIR layout:

- `packages-N/`: natural known-item queries: a package's one-line summary finds its long description
  (the summary is not part of the document), 300 queries sampled from the N documents;
- `packages-N-identifiers/`: identifier queries: a package name that is one token and occurs in no
  other document of the set (title or text), 100 queries; the corpus is the same file (a symlink), so
  one ingestion serves both (`ragbus eval DIR-identifiers --no-ingest --tenant T`).

Packages whose long description or summary is shared with another package are left out, so every
query has exactly one right answer. Sampling is seeded and the smaller set is a subset of the larger.
The source is apt's `Translation-en` index (English long descriptions), which `apt-get update` fetches
when languages are enabled; without touching the system's lists:

    mkdir -p /tmp/apt-en/lists/partial
    apt-get update -o Acquire::Languages=en -o Dir::State::Lists=/tmp/apt-en/lists

The output goes to bench/out/ (git-ignored): the text is Debian's, not the project's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NATURAL_QUERIES = 300
IDENTIFIER_QUERIES = 100
_WORD = re.compile(r"[a-z0-9]+")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9]{5,}$")


def read(path: Path) -> str:
    if path.suffix == ".lz4":
        return subprocess.run(["lz4cat", str(path)], check=True, capture_output=True, text=True).stdout
    return path.read_text(encoding="utf-8")


def parse_translations(text: str) -> dict[str, tuple[str, str]]:
    """package -> (summary, long description) from a Translation-en index."""
    out: dict[str, tuple[str, str]] = {}
    for stanza in text.split("\n\n"):
        name, summary, body, in_desc = "", "", [], False
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Description-en: "):
                summary, in_desc = line[16:].strip(), True
            elif in_desc and line.startswith(" "):
                body.append("" if line.strip() == "." else line[1:].rstrip())
            else:
                in_desc = False
        long = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()
        if name and summary and len(long) >= 80:
            out.setdefault(name, (summary, long))
    return out


def _order(name: str) -> str:
    return hashlib.sha256(f"ragbus-packages\x1f{name}".encode()).hexdigest()


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build(packages: dict[str, tuple[str, str]], size: int, out: Path) -> None:
    longs = Counter(long for _, long in packages.values())
    summaries = Counter(summary.lower() for summary, _ in packages.values())
    unique = sorted((n for n, (s, long) in packages.items() if longs[long] == 1 and summaries[s.lower()] == 1),
                    key=_order)
    if len(unique) < size:
        raise SystemExit(f"only {len(unique)} packages with unique descriptions, fewer than {size}")
    docs = unique[:size]
    base = out / f"packages-{size // 1000}k"
    ids = out / f"packages-{size // 1000}k-identifiers"
    for d in (base, ids):
        d.mkdir(parents=True, exist_ok=True)
    _write(base / "corpus.jsonl", [{"id": n, "title": n, "text": packages[n][1]} for n in docs])
    natural = sorted(docs, key=lambda n: _order("q" + n))[:NATURAL_QUERIES]
    _write(base / "queries.jsonl", [{"id": f"summary/{n}", "text": packages[n][0]} for n in natural])
    (base / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"summary/{n}\t{n}\t1\n" for n in natural))
    where = Counter(w for n in docs for w in set(_WORD.findall(f"{n}\n{packages[n][1]}".lower())))
    names = [n for n in sorted(docs, key=lambda n: _order("i" + n)) if _IDENTIFIER.match(n) and where[n] == 1]
    chosen = names[:IDENTIFIER_QUERIES]
    _write(ids / "queries.jsonl", [{"id": f"name/{n}", "text": n} for n in chosen])
    (ids / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"name/{n}\t{n}\t1\n" for n in chosen))
    link = ids / "corpus.jsonl"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("..") / base.name / "corpus.jsonl")
    print(f"{base}: {len(docs)} documents, {len(natural)} summary queries; {ids}: {len(chosen)} identifier queries")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lists", type=Path, default=Path("/tmp/apt-en/lists"),
                    help="apt lists directory holding *_i18n_Translation-en(.lz4)")
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--out", type=Path, default=ROOT / "out")
    args = ap.parse_args()
    files = sorted(args.lists.glob("*_i18n_Translation-en*"))
    if not files:
        raise SystemExit(f"no Translation-en index in {args.lists}: see this script's docstring for apt-get update")
    packages: dict[str, tuple[str, str]] = {}
    for f in files:
        for name, value in parse_translations(read(f)).items():
            packages.setdefault(name, value)
    for size in (int(s) for s in args.sizes.split(",")):
        build(packages, size, args.out)


if __name__ == "__main__":
    main()
