"""The retrieval evaluation matrix: several sets, and the same text under several document structures.

    python bench/sets.py [--data ../shared/data/pydocs-faq-dev] [--apt-lists /tmp/apt-en/lists]
                         [--only NAME,...] [--out bench/out/sets]

A retrieval default tuned on one set learns how that set is titled and cut, not how users' documents are
(issue 22: parent evidence through shared titles gained +0.04 on pydocs-faq-dev as it is titled and lost
0.06-0.08 when the same sections were titled by their page). So every retrieval change is judged on this
matrix, and a default is chosen by its worst row. Rows, each a BEIR directory under `--out`:

- `pydocs`: pydocs-faq-dev as it is (3,234 sections; only the FAQ pages' sections share a title).
- `pydocs-page-titled`: the same sections, every one titled by its page (what a section-per-document
  ingest of a documentation site gives: siblings share their page's title).
- `pydocs-heading-titled`: every section titled by its own heading alone (no page in the title); the
  FAQ sections, whose heading (the question) was removed, keep their page title.
- `pydocs-pages`: one Markdown document per page, its sections under `##` headings (the FAQ entries,
  which have none, separated by a rule), judged at the page: the page-per-document ingest.
- `packages-2k`, `packages-2k-identifiers`, `packages-20k`, `packages-20k-identifiers`: Debian package
  descriptions found by their one-line summary, or by their name (bench/packages_set.py).
- `manpages-md` and `manpages-text`: another technical domain, from Debian's `manpages` and
  `manpages-dev` packages (Linux man-pages 6.03, sections 1-8): each page rendered by groff, its NAME
  section taken out and its one-line description ("open and possibly create a file") used as the query
  for it, published once as Markdown (`##` for the generic headings every page shares: SYNOPSIS,
  DESCRIPTION, RETURN VALUE, ERRORS, ...) and once as the same text in plain text. Terse queries,
  sections with generic headings: the shape where fixed fusion weights tuned on questions lose to BM25.

A row whose corpus has a `content_type` is ingested with it (`ragbus ingest` and `ragbus eval` honour it
the same way). The text of every row comes from the shared data or from Debian: it is written under
bench/out/ (git-ignored), never into the repository. `bench/out/sets/matrix.txt` lists the rows in
order, for `ragbus eval $(cat bench/out/sets/matrix.txt)` and `bench/retrieval.py --matrix`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import packages_set

ROOT = Path(__file__).resolve().parent
PYDOCS = ROOT.parent.parent / "shared/data/pydocs-faq-dev"
Row = dict[str, Any]


def _read_jsonl(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_set(out: Path, corpus: Iterable[Row], queries: Iterable[Row], qrels: Iterable[tuple[str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (out / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels),
                                   encoding="utf-8")


def _qrels(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(q, d) for q, d, *_ in (line.split("\t") for line in lines if line.strip())]


# --- pydocs-faq-dev under other structures -----------------------------------------------------------------

def page_of(doc_id: str) -> str:
    return doc_id.split("#", 1)[0]


def page_title(title: str) -> str:
    return title.split(" / ", 1)[0]


def heading(title: str) -> str | None:
    """The section's own heading, when its title carries one (`Page / Heading`)."""
    _, sep, rest = title.partition(" / ")
    return rest if sep else None


def retitled(rows: list[Row], title: Callable[[Row], str]) -> list[Row]:
    return [r | {"title": title(r)} for r in rows]


def as_pages(rows: list[Row]) -> list[Row]:
    """One Markdown document per page, in corpus order; a section with a heading of its own under `##`."""
    pages: dict[str, list[Row]] = {}
    for r in rows:
        pages.setdefault(page_of(r["id"]), []).append(r)
    out = []
    for page, sections in pages.items():
        parts = []
        for s in sections:
            head = heading(s["title"])
            parts.append(f"## {head}\n\n{s['text']}" if head else f"* * *\n\n{s['text']}")
        out.append({"id": page, "title": page_title(sections[0]["title"]), "text": "\n\n".join(parts),
                    "content_type": "text/markdown"})
    return out


def build_pydocs(data: Path, out: Path) -> list[Path]:
    rows = _read_jsonl(data / "corpus.jsonl")
    queries = _read_jsonl(data / "queries.jsonl")
    qrels = _qrels(data / "qrels.tsv")
    made = []
    as_is = out / "pydocs"
    as_is.mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):  # linked, not copied
        link = as_is / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((data / name).resolve())
    made.append(as_is)
    structures = {
        "pydocs-page-titled": retitled(rows, lambda r: page_title(r["title"])),
        "pydocs-heading-titled": retitled(rows, lambda r: heading(r["title"]) or page_title(r["title"])),
    }
    for name, corpus in structures.items():
        _write_set(out / name, corpus, queries, qrels)
        made.append(out / name)
    _write_set(out / "pydocs-pages", as_pages(rows), queries, sorted({(q, page_of(d)) for q, d in qrels}))
    made.append(out / "pydocs-pages")
    return made


# --- Debian man pages ----------------------------------------------------------------------------------------

_SECTION = re.compile(r"^[A-Z][A-Z0-9 ,/()&'-]*$")
_SUBSECTION = re.compile(r"^ {3}(\S.*)$")


def render(page: bytes) -> str | None:
    """A man page as groff lays it out for a terminal, paragraphs unwrapped, no hyphenation; None for an
    alias page (`.so other.2`) or one groff cannot render."""
    source = gzip.decompress(page)
    if source.lstrip().startswith(b".so "):
        return None
    done = subprocess.run(["groff", "-man", "-Tutf8", "-rLL=2000n", "-rHY=0", "-P-cbou"], input=source,
                          capture_output=True, check=False)
    if done.returncode != 0:
        return None
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines[1:-1])  # without the running header and footer


def parse_man(rendered: str) -> tuple[str, list[tuple[int, str, list[str]]]]:
    """(NAME line, [(level, heading, body lines)]) of a rendered page."""
    sections: list[tuple[int, str, list[str]]] = []
    for line in rendered.splitlines():
        sub = _SUBSECTION.match(line)
        if line and not line[0].isspace() and _SECTION.match(line.strip()):
            sections.append((2, line.strip(), []))
        elif sub and sections:
            sections.append((3, sub.group(1).strip(), []))
        elif sections:
            sections[-1][2].append(line[7:] if line.startswith(" " * 7) else line.strip())
    name = next((" ".join(" ".join(b).split()) for lv, h, b in sections if lv == 2 and h == "NAME"), "")
    return name, [s for s in sections if s[1] != "NAME"]


def man_text(sections: list[tuple[int, str, list[str]]], markdown: bool) -> str:
    parts = []
    for level, head, body in sections:
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip("\n")
        parts.append(f"{'#' * level} {head}\n\n{text}" if markdown else f"{head}\n\n{text}")
    return "\n\n".join(parts).strip() + "\n"


def build_manpages(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="ragbus-man-") as tmp:
        subprocess.run(["apt-get", "download", "-q", "manpages", "manpages-dev"], cwd=tmp, check=True,
                       capture_output=True)
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        pages = sorted(p for p in (Path(tmp) / "root/usr/share/man").glob("man[1-8]/*.gz") if not p.is_symlink())
        parsed: list[tuple[str, str, str, list[tuple[int, str, list[str]]]]] = []
        for path in pages:
            rendered = render(path.read_bytes())
            if rendered is None:
                continue
            name, sections = parse_man(rendered)
            names, sep, description = name.partition(" - ")
            body_words = sum(len(" ".join(b).split()) for _, _, b in sections)
            if not sep or not description or body_words < 30:
                continue
            page = path.name.removesuffix(".gz")  # open.2
            stem, _, number = page.rpartition(".")
            parsed.append((f"{path.parent.name}/{page}", f"{stem}({number})", description.strip(), sections))
    counts = Counter(d.lower() for _, _, d, _ in parsed)
    kept = [p for p in parsed if counts[p[2].lower()] == 1]  # one right answer per query
    queries = [{"id": f"q/{doc_id}", "text": description} for doc_id, _, description, _ in kept]
    qrels = [(f"q/{doc_id}", doc_id) for doc_id, *_ in kept]
    made = []
    for name, markdown in (("manpages-md", True), ("manpages-text", False)):
        corpus = [{"id": doc_id, "title": title, "text": man_text(sections, markdown),
                   "content_type": "text/markdown" if markdown else "text/plain"}
                  for doc_id, title, _, sections in parsed]
        _write_set(out / name, corpus, queries, qrels)
        made.append(out / name)
    print(f"manpages: {len(parsed)} pages, {len(kept)} queries (descriptions shared by two pages left out)")
    return made


def build_packages(lists: Path, out: Path) -> list[Path]:
    files = sorted(lists.glob("*_i18n_Translation-en*"))
    if not files:
        raise SystemExit(f"no Translation-en index in {lists}: see bench/packages_set.py for apt-get update")
    packages: dict[str, tuple[str, str]] = {}
    for f in files:
        for name, value in packages_set.parse_translations(packages_set.read(f)).items():
            packages.setdefault(name, value)
    made = []
    for size in (2000, 20000):
        packages_set.build(packages, size, out)
        made += [out / f"packages-{size // 1000}k", out / f"packages-{size // 1000}k-identifiers"]
    return made


ORDER = ("pydocs", "pydocs-page-titled", "pydocs-heading-titled", "pydocs-pages", "manpages-md", "manpages-text",
         "packages-2k", "packages-2k-identifiers", "packages-20k", "packages-20k-identifiers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=PYDOCS)
    ap.add_argument("--apt-lists", type=Path, default=Path("/tmp/apt-en/lists"))
    ap.add_argument("--only", default="pydocs,manpages,packages", help="which families to (re)build")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "sets")
    args = ap.parse_args()
    families = set(args.only.split(","))
    if "pydocs" in families:
        build_pydocs(args.data, args.out)
    if "manpages" in families:
        build_manpages(args.out)
    if "packages" in families:
        build_packages(args.apt_lists, args.out)
    rows = [args.out / name for name in ORDER if (args.out / name / "qrels.tsv").exists()]
    (args.out / "matrix.txt").write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    print(f"{args.out / 'matrix.txt'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
