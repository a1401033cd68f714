"""Hybrid retrieval: BM25 and dense rankings fused by reciprocal rank fusion (Cormack et al., 2009).

BM25 finds rare names and numbers that embeddings blur; embeddings find paraphrases that share no
word with the question. RRF combines the two rankings without calibrating their scores, which live
on unrelated scales: a passage scores ``sum(1 / (rrf_k + rank))`` over the lists it appears in
(ranks from 1, each list cut at ``depth``).

The two parts are ordinary BM25 and dense retrievers, each loaded from (or built into) the index
cache under the very key ``retriever=bm25`` / ``retriever=dense`` use, so a hybrid run next to the
single ones builds nothing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_ray.retrieval.base import BaseRetriever

PARTS = ("bm25", "dense")


def reciprocal_rank_fusion(rankings: list[list[int]], rrf_k: float, k: int) -> list[tuple[int, float]]:
    """The top ``k`` (passage index, fused score) of several best-first rankings. Ties go to the
    passage with the better best rank, then the lower index, so the order is deterministic."""
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking, start=1):
            scores[index] = scores.get(index, 0.0) + 1.0 / (rrf_k + rank)
            best[index] = min(best.get(index, rank), rank)
    order = sorted(scores, key=lambda i: (-scores[i], best[i], i))
    return [(i, scores[i]) for i in order[:k]]


class HybridRetriever(BaseRetriever):
    """BM25 + dense, fused with RRF; ``config`` is a ``HybridConfig``."""

    def __init__(self, config: Any, passages):
        super().__init__(config, passages)
        self.parts: dict[str, BaseRetriever] = {}
        self.parts_built_now: dict[str, bool] = {}

    def _part_configs(self) -> dict[str, Any]:
        return {"bm25": self.config.bm25, "dense": self.config.dense}

    @classmethod
    def index_settings(cls, config: Any) -> dict[str, Any]:
        """The fusion settings and both parts' settings, with the dtype the dense part's ``auto``
        became here: a hybrid's cached answers from a bf16 encoder are not taken for an fp32 one's."""
        from slm_ray.retrieval.dense import encoder_dtype

        settings = super().index_settings(config)
        settings["dense"] = {**settings["dense"], "dtype": encoder_dtype(config.dense)[0]}
        return settings

    @classmethod
    def open_cached(cls, config: Any, passages, cache_dir: str | Path) -> tuple["HybridRetriever", bool]:
        """Both parts from the shared index cache (built there when missing); True if one was built."""
        from slm_ray.retrieval.base import build_or_load

        retriever = cls(config, passages)
        for name, part_cfg in retriever._part_configs().items():
            retriever.parts[name], retriever.parts_built_now[name] = build_or_load(part_cfg, passages, cache_dir)
        return retriever, any(retriever.parts_built_now.values())

    def build(self) -> None:
        from slm_ray.config import import_object

        for name, part_cfg in self._part_configs().items():
            self.parts[name] = import_object(part_cfg.target)(part_cfg, self.passages)
            self.parts[name].build()

    def save(self, folder: Path) -> None:
        for name, part in self.parts.items():
            (folder / name).mkdir()
            part.save(folder / name)

    def load(self, folder: Path) -> None:
        from slm_ray.config import import_object

        for name, part_cfg in self._part_configs().items():
            part = import_object(part_cfg.target)(part_cfg, self.passages)
            part.load(folder / name)
            self.parts[name] = part

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        depth = min(max(self.config.depth, k), len(self.passages))
        ranked = {name: self.parts[name].search(queries, depth) for name in PARTS}
        return [reciprocal_rank_fusion([[i for i, _ in ranked[name][q]] for name in PARTS], self.config.rrf_k, k)
                for q in range(len(queries))]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rrf_k": self.config.rrf_k, "depth": self.config.depth,
                **{name: part.describe() for name, part in self.parts.items()},
                "parts_built_now": dict(self.parts_built_now)}
