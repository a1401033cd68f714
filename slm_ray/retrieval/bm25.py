"""BM25 with bm25s: sparse, fast on CPU, no model to load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from slm_ray.retrieval.base import BaseRetriever, passage_text


def _bm25s() -> Any:
    """bm25s, imported on first use; its import sets its own logger to DEBUG, so quiet it again."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class BM25Retriever(BaseRetriever):
    """bm25s over stemmed tokens without stopwords (PyStemmer, bm25s' English list)."""

    def __init__(self, config: Any, passages):
        super().__init__(config, passages)
        self._model = None
        self._stemmer = None

    def _tokenize(self, texts: list[str]):
        bm25s = _bm25s()
        if self._stemmer is None and self.config.stemmer:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(self.config.stemmer)
        return bm25s.tokenize(texts, stopwords=self.config.stopwords, stemmer=self._stemmer, show_progress=False)

    def build(self) -> None:
        tokens = self._tokenize([passage_text(p) for p in self.passages])
        if not tokens.vocab:
            from slm_ray.errors import DataError

            raise DataError(f"no passage of the corpus has a word left once stopwords "
                            f"(retriever.stopwords={self.config.stopwords!r}) are removed: BM25 has nothing to index")
        self._model = _bm25s().BM25(k1=self.config.k1, b=self.config.b)
        self._model.index(tokens, show_progress=False)

    def save(self, folder: Path) -> None:
        self._model.save(str(folder))

    def load(self, folder: Path) -> None:
        self._model = _bm25s().BM25.load(str(folder))
        if self._model.scores["num_docs"] != len(self.passages):
            raise ValueError(f"index holds {self._model.scores['num_docs']} documents, corpus has {len(self.passages)}")

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        doc_ids, scores = self._model.retrieve(self._tokenize(queries), k=k, show_progress=False)
        return [list(zip(row_ids.tolist(), row_scores.tolist())) for row_ids, row_scores in zip(doc_ids, scores)]
