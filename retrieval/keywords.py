"""The keyword analyser for backends without their own stemming (Weaviate has none: weaviate#2439).

It does what LanceDB's full-text index does natively (its `simple` tokenizer with English stemming and
stop words): lower-case, fold accents to ASCII, split on anything that is not a letter or a digit, drop
English stop words and tokens over 40 characters, and reduce each word to its Snowball (Porter 2) English
stem. A backend indexes the analysed text with plain whitespace tokenisation and searches it with the
analysed query, so "queued exits" finds "queue exit" in both backends alike.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import snowballstemmer

MAX_TOKEN_CHARS = 40
_TOKEN = re.compile(r"[a-z0-9]+")
#: The English stop words of Lucene/tantivy (what LanceDB removes), so both backends drop the same words.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split())


_local = threading.local()


def _stemmer() -> snowballstemmer.stemmer:
    """One per thread: a Snowball stemmer keeps the word it works on in its own fields, so two threads
    stemming with one stemmer corrupt each other's words (the answerer answers a batch's queries on a thread
    pool; shared, it once failed a query with "IndexError: string index out of range")."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = snowballstemmer.stemmer("english")
    return stemmer


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()


def tokens(text: str) -> list[str]:
    words = [w for w in _TOKEN.findall(_fold(text)) if w not in STOP_WORDS and len(w) <= MAX_TOKEN_CHARS]
    return list(_stemmer().stemWords(words))


def analyse(text: str) -> str:
    """The text as the keyword index should see it: stems separated by single spaces."""
    return " ".join(tokens(text))
