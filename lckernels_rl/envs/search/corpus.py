"""A synthetic entity-relation corpus with multi-hop questions and a BM25 index over it (for ``autorefine``).

The world (generated from ``corpus_seed``): ``n_entities`` made-up names of two syllables (``kobo``, ``zari``) and
``len(relations)`` relation words; every entity has, for every relation, one target entity (never itself).  One
document per (entity, relation) fact: title = the subject, text = ``"<subject> <relation> <target>"``.

A ``k``-hop question (``k`` in ``1..3``) starts at an entity and follows ``k`` relations; it is written inside out,
as "``pet of boss of kobo?``" (boss of kobo, then that entity's pet); its gold answer is the last entity of the chain.

Retrieval: :class:`BM25Index` wraps ``rank_bm25.BM25Okapi`` (a maintained library; the scoring is not ours) over
lower-cased word tokens of the documents; the top ``k`` documents with a positive score come back, ties in document
order.  A query none of whose words occurs in the corpus gets no documents (the environment says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Document", "Question", "Corpus", "BM25Index", "make_corpus", "make_question", "tokenize"]

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
RELATIONS = ("boss", "pet", "home")
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words (the BM25 tokenizer of documents and queries)."""
    return _WORD.findall(str(text).lower())


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    """A multi-hop question: ``chain`` = [start, e1, ..., ek] (``chain[-1]`` the answer), ``relations`` = [r1..rk]."""

    text: str
    answer: str
    chain: tuple[str, ...]
    relations: tuple[str, ...]

    @property
    def hops(self) -> int:
        return len(self.relations)

    def to_dict(self) -> dict:
        return {"text": self.text, "answer": self.answer, "chain": list(self.chain), "relations": list(self.relations)}

    @classmethod
    def from_dict(cls, d: dict) -> "Question":
        for k in ("text", "answer", "chain", "relations"):
            if k not in d:
                raise ValueError(f"Question.from_dict: missing key {k!r}; got keys {sorted(d)}")
        return cls(str(d["text"]), str(d["answer"]), tuple(map(str, d["chain"])), tuple(map(str, d["relations"])))


@dataclass
class Corpus:
    entities: list[str]
    relations: tuple[str, ...]
    facts: dict[tuple[str, str], str]  # (subject, relation) -> target
    documents: list[Document]


def _names(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = "".join(CONSONANTS[int(rng.integers(len(CONSONANTS)))] + VOWELS[int(rng.integers(len(VOWELS)))]
                    for _ in range(2))
        if w not in out and w not in RELATIONS and w not in ("of",):
            out.append(w)
    return out


def make_corpus(n_entities: int = 12, relations: tuple[str, ...] = RELATIONS, seed: int = 0) -> Corpus:
    """The world of ``seed``: entities, one target per (entity, relation), one document per fact."""
    if isinstance(n_entities, bool) or not isinstance(n_entities, int) or n_entities < 2:
        raise ValueError(f"make_corpus: `n_entities` must be an int >= 2; got {n_entities!r}")
    if not relations or not all(isinstance(r, str) and r.isalpha() and r.islower() for r in relations):
        raise ValueError(f"make_corpus: `relations` must be lower-case words; got {relations!r}")
    rng = np.random.default_rng([int(seed), 1])
    ents = _names(rng, n_entities)
    facts: dict[tuple[str, str], str] = {}
    docs: list[Document] = []
    for e in ents:
        for r in relations:
            others = [x for x in ents if x != e]
            t = others[int(rng.integers(len(others)))]
            facts[(e, r)] = t
            docs.append(Document(title=e, text=f"{e} {r} {t}"))
    return Corpus(ents, tuple(relations), facts, docs)


def make_question(corpus: Corpus, hops: int, rng: np.random.Generator) -> Question:
    """A ``hops``-hop question over ``corpus`` (relations drawn with ``rng``; consecutive relations differ)."""
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
        raise ValueError(f"make_question: `hops` must be an int >= 1; got {hops!r}")
    start = corpus.entities[int(rng.integers(len(corpus.entities)))]
    chain, rels = [start], []
    for _ in range(hops):
        choices = [r for r in corpus.relations if not rels or r != rels[-1]] or list(corpus.relations)
        r = choices[int(rng.integers(len(choices)))]
        rels.append(r)
        chain.append(corpus.facts[(chain[-1], r)])
    text = " of ".join(reversed(rels)) + f" of {start}?"
    return Question(text=text, answer=chain[-1], chain=tuple(chain), relations=tuple(rels))


class BM25Index:
    """BM25 (Okapi, ``rank_bm25``) over documents; :meth:`search` -> the top ``k`` documents with a positive score."""

    def __init__(self, documents: list[Document], k1: float = 1.5, b: float = 0.75):
        try:
            from rank_bm25 import BM25Okapi
        except ImportError as e:  # pragma: no cover - dependency missing
            raise ImportError("BM25Index needs the `rank_bm25` package (pip install rank_bm25)") from e
        if not documents:
            raise ValueError("BM25Index: `documents` must be a non-empty list")
        self.documents = list(documents)
        self._bm25 = BM25Okapi([tokenize(d.title + " " + d.text) for d in self.documents], k1=k1, b=b)

    def search(self, query: str, k: int = 3) -> list[tuple[Document, float]]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"BM25Index.search: `k` must be a positive int; got {k!r}")
        terms = tokenize(query)
        if not terms:
            return []
        scores = self._bm25.get_scores(terms)
        order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
        return [(self.documents[i], float(scores[i])) for i in order[:k] if scores[i] > 0]


def format_documents(hits: list[tuple[Document, float]], no_hit: Optional[str] = None) -> str:
    """The observation of one search, in the released format ``Doc i(Title: t) text`` (one per line) inside
    ``<documents>...</documents>`` (``search_r1/llm_agent/generation.py``: ``_passages2string`` and
    ``execute_predictions``); no hit: ``no_hit`` inside the tags."""
    if not hits:
        return f"<documents>{no_hit or 'No documents match the query.'}</documents>"
    body = "\n".join(f"Doc {i + 1}(Title: {d.title}) {d.text}" for i, (d, _) in enumerate(hits))
    return f"<documents>{body}</documents>"
