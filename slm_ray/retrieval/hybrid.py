"""Hybrid retrieval: BM25 and dense rankings fused by a convex combination of normalised scores
or by reciprocal rank fusion (``fusion: convex | rrf``).

BM25 finds rare names and numbers that embeddings blur; embeddings find paraphrases that share no
word with the question. Their scores live on unrelated scales, so they are not simply added:

- ``convex`` (Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval", 2023): each
  list's scores are min-max normalised per query, over its top ``depth``, and a passage scores
  ``alpha * dense + (1 - alpha) * bm25``; a passage missing from one list gets 0 from it (that
  list's minimum). Unlike RRF it keeps how far apart the scores are, not only their order.
- ``rrf`` (Cormack et al., 2009): a passage scores ``sum(1 / (rrf_k + rank))`` over the lists it
  appears in (ranks from 1, each list cut at ``depth``); only the ranks count.

The two parts are ordinary BM25 and dense retrievers, each loaded from (or built into) the index
cache under the very key ``retriever=bm25`` / ``retriever=dense`` use, so a hybrid run next to the
single ones builds nothing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_ray.retrieval.base import BaseRetriever, IndexOrigin

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


def min_max(scores: list[float]) -> list[float]:
    """Scores mapped onto [0, 1] by the list's own minimum and maximum; all 0.0 when they are equal
    (BM25 of a question sharing no word with the corpus): a list that tells nothing apart adds nothing."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    return [0.0 if high == low else (s - low) / (high - low) for s in scores]


def convex_fusion(dense: list[tuple[int, float]], bm25: list[tuple[int, float]], alpha: float,
                  k: int) -> list[tuple[int, float]]:
    """The top ``k`` (passage index, ``alpha * norm(dense) + (1 - alpha) * norm(bm25)``) over the union of
    two best-first (index, score) lists, each min-max normalised on its own; a passage missing from a
    list scores 0 there. Ties go to the better rank in the list of larger weight (dense at alpha 0.5),
    then in the other, then the lower index: the order is deterministic and alpha 0 / 1 give exactly
    the BM25 / dense order."""
    fused: dict[int, float] = {}
    for weight, hits in ((alpha, dense), (1.0 - alpha, bm25)):
        for (i, _), norm in zip(hits, min_max([s for _, s in hits])):
            fused[i] = fused.get(i, 0.0) + weight * norm
    first, second = (dense, bm25) if alpha >= 0.5 else (bm25, dense)
    rank_1, rank_2 = ({i: rank for rank, (i, _) in enumerate(hits)} for hits in (first, second))
    missing = len(fused)  # a rank after every listed one
    order = sorted(fused, key=lambda i: (-fused[i], rank_1.get(i, missing), rank_2.get(i, missing), i))
    return [(i, fused[i]) for i in order[:k]]


class HybridRetriever(BaseRetriever):
    """BM25 + dense, fused by ``config.fusion``; ``config`` is a ``HybridConfig``."""

    def __init__(self, config: Any, passages):
        super().__init__(config, passages)
        self.parts: dict[str, BaseRetriever] = {}
        self.parts_built_now: dict[str, bool] = {}

    def _part_configs(self) -> dict[str, Any]:
        return {"bm25": self.config.bm25, "dense": self.config.dense}

    @classmethod
    def index_settings(cls, config: Any) -> dict[str, Any]:
        """The fusion settings (those of the chosen fusion only) and both parts' settings, with the dtype
        the dense part's ``auto`` became here: a hybrid's cached answers from a bf16 encoder are not
        taken for an fp32 one's. The parts' own indexes are cached under their own keys, so a fusion
        setting changes this key (the answer cache's) without building anything again."""
        from slm_ray.retrieval.dense import encoder_dtype

        settings = super().index_settings(config)
        if config.fusion == "rrf":  # the key an RRF hybrid had before there was a choice: its answers stay valid
            settings.pop("fusion")
            settings.pop("alpha")
        else:
            settings.pop("rrf_k")
        settings["dense"] = {**settings["dense"], "dtype": encoder_dtype(config.dense)[0]}
        return settings

    @classmethod
    def open_cached(cls, config: Any, passages, cache_dir: str | Path,
                    index_store: str | None = None) -> tuple["HybridRetriever", IndexOrigin]:
        """Both parts from the shared index cache (built, or downloaded from ``index_store``, when
        missing there); where they came from, as one origin."""
        from slm_ray.retrieval.base import _cached_index

        retriever = cls(config, passages)
        origins = []
        for name, part_cfg in retriever._part_configs().items():
            retriever.parts[name], origin = _cached_index(part_cfg, passages, cache_dir, load=True,
                                                          index_store=index_store)
            retriever.parts_built_now[name] = origin.built
            origins.append(origin)
        return retriever, IndexOrigin.of_parts(origins, index_store)

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
        return [self.fuse(ranked["dense"][q], ranked["bm25"][q], k) for q in range(len(queries))]

    def fuse(self, dense: list[tuple[int, float]], bm25: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
        """One query's top ``k`` from its two parts' (index, score) lists, by the configured fusion."""
        if self.config.fusion == "convex":
            return convex_fusion(dense, bm25, self.config.alpha, k)
        return reciprocal_rank_fusion([[i for i, _ in hits] for hits in (bm25, dense)], self.config.rrf_k, k)

    def describe(self) -> dict[str, Any]:
        fusion = {"alpha": self.config.alpha} if self.config.fusion == "convex" else {"rrf_k": self.config.rrf_k}
        return {**super().describe(), "fusion": self.config.fusion, **fusion, "depth": self.config.depth,
                **{name: part.describe() for name, part in self.parts.items()},
                "parts_built_now": dict(self.parts_built_now)}
