"""Hybrid retrieval: BM25 + dense (real bm25s, FAISS and the packaged all-MiniLM-L6-v2) fused by a convex
combination of normalised scores or by RRF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_ray.config import BM25Config, DenseConfig, HybridConfig
from slm_ray.data.corpus import load_corpus
from slm_ray.retrieval.base import build_or_load, index_key
from slm_ray.retrieval.hybrid import convex_fusion, min_max, reciprocal_rank_fusion

QUESTION = "who got the first nobel prize in physics"


def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = reciprocal_rank_fusion([[3, 1, 2], [1, 4]], rrf_k=60, k=3)
    # passage 1: 1/62 + 1/61; passage 3: 1/61; passage 4: 1/62; passage 2: 1/63
    assert [i for i, _ in fused] == [1, 3, 4]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert reciprocal_rank_fusion([[5, 6], [6, 5]], rrf_k=0, k=2) == [(5, 1.5), (6, 1.5)]  # tie: lower index


def test_min_max_maps_each_list_onto_0_to_1() -> None:
    assert min_max([4.0, 3.0, 2.0]) == [1.0, 0.5, 0.0]
    assert min_max([-0.2, -0.4]) == [1.0, 0.0]
    assert min_max([0.0, 0.0, 0.0]) == [0.0, 0.0, 0.0]  # BM25 of a question sharing no word: no weight
    assert min_max([]) == []


DENSE = [(1, 0.9), (2, 0.8), (3, 0.5)]  # (passage index, score), best first
BM25 = [(3, 12.0), (4, 8.0), (1, 4.0)]


def test_convex_fusion_by_hand() -> None:
    fused = dict(convex_fusion(DENSE, BM25, alpha=0.5, k=4))
    # dense normalised: 1 -> 1, 2 -> 0.75, 3 -> 0; bm25: 3 -> 1, 4 -> 0.5, 1 -> 0; missing -> 0
    assert fused == pytest.approx({1: 0.5, 2: 0.375, 3: 0.5, 4: 0.25})
    assert [i for i, _ in convex_fusion(DENSE, BM25, alpha=0.5, k=4)] == [1, 3, 2, 4]  # tie: dense rank
    assert [i for i, _ in convex_fusion(DENSE, BM25, alpha=0.8, k=2)] == [1, 2]
    assert convex_fusion(DENSE, BM25, alpha=0.2, k=1) == [(3, pytest.approx(0.8))]


def test_a_passage_missing_from_a_list_gets_its_minimum() -> None:
    # passage 9 only in BM25, passage 2 only in dense: each scores what the list's last passage scores there
    fused = dict(convex_fusion([(1, 0.7), (2, 0.6), (5, 0.1)], [(9, 3.0), (5, 2.0), (1, 1.0)], alpha=0.5, k=5))
    assert fused[9] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    assert fused[2] == pytest.approx(0.5 * (0.5 / 0.6) + 0.5 * 0.0)
    assert set(fused) == {1, 2, 5, 9}


@pytest.mark.parametrize("alpha,expected", [(0.0, [i for i, _ in BM25] + [2]), (1.0, [i for i, _ in DENSE] + [4])])
def test_alpha_0_is_the_bm25_ranking_and_1_the_dense_one(alpha: float, expected: list[int]) -> None:
    assert [i for i, _ in convex_fusion(DENSE, BM25, alpha, k=10)] == expected


def test_convex_ties_are_deterministic() -> None:
    # equal scores everywhere: the order is the heavier list's, then the other's, then the index
    dense, bm25 = [(7, 0.5), (3, 0.5), (5, 0.5)], [(5, 1.0), (8, 1.0)]
    assert [i for i, _ in convex_fusion(dense, bm25, 0.5, k=5)] == [7, 3, 5, 8]
    assert [i for i, _ in convex_fusion(dense, bm25, 0.4, k=5)] == [5, 8, 7, 3]


@pytest.fixture(scope="module")
def passages(small_corpus: Path):
    from slm_ray.config import CorpusConfig

    return load_corpus(CorpusConfig(name="small", path=str(small_corpus)), ".cache")


def test_hybrid_reuses_the_single_indexes_and_ranks_by_fused_score(passages, shared_cache: Path) -> None:
    bm25, _ = build_or_load(BM25Config(), passages, shared_cache)
    dense, _ = build_or_load(DenseConfig(), passages, shared_cache)
    hybrid, built = build_or_load(HybridConfig(depth=20, fusion="rrf"), passages, shared_cache)
    assert not built and hybrid.describe()["parts_built_now"] == {"bm25": False, "dense": False}
    top = hybrid.retrieve([QUESTION], k=5)[0]
    assert top[0].passage.title == "List of Nobel laureates in Physics"
    assert [h.score for h in top] == sorted((h.score for h in top), reverse=True)
    # the fused score is RRF over the two rankings, each cut at depth
    ids = {p.id: i for i, p in enumerate(passages)}
    rank_b = [ids[h.passage.id] for h in bm25.retrieve([QUESTION], 20)[0]]
    rank_d = [ids[h.passage.id] for h in dense.retrieve([QUESTION], 20)[0]]
    expected = reciprocal_rank_fusion([rank_b, rank_d], 60, 5)
    assert [(ids[h.passage.id], h.score) for h in top] == [(i, pytest.approx(s)) for i, s in expected]
    info = hybrid.describe()
    assert info["type"] == "hybrid" and info["fusion"] == "rrf" and info["rrf_k"] == 60
    assert info["dense"]["index_type"] == "flat" and "alpha" not in info


def test_the_convex_hybrid_scores_by_the_normalised_scores_of_both_parts(passages, shared_cache: Path) -> None:
    bm25, _ = build_or_load(BM25Config(), passages, shared_cache)
    dense, _ = build_or_load(DenseConfig(), passages, shared_cache)
    hybrid, built = build_or_load(HybridConfig(depth=20, alpha=0.6), passages, shared_cache)
    assert not built and hybrid.describe()["parts_built_now"] == {"bm25": False, "dense": False}
    ids = {p.id: i for i, p in enumerate(passages)}
    hits_b = [(ids[h.passage.id], h.score) for h in bm25.retrieve([QUESTION], 20)[0]]
    hits_d = [(ids[h.passage.id], h.score) for h in dense.retrieve([QUESTION], 20)[0]]
    top = hybrid.retrieve([QUESTION], k=5)[0]
    assert top[0].passage.title == "List of Nobel laureates in Physics"
    expected = convex_fusion(hits_d, hits_b, 0.6, 5)
    assert [(ids[h.passage.id], h.score) for h in top] == [(i, pytest.approx(s)) for i, s in expected]
    info = hybrid.describe()
    assert (info["fusion"], info["alpha"], info["depth"]) == ("convex", 0.6, 20) and "rrf_k" not in info
    for alpha, single in ((0.0, hits_b), (1.0, hits_d)):  # the ends of the range are the parts' own rankings
        alone, _ = build_or_load(HybridConfig(depth=20, alpha=alpha), passages, shared_cache)
        assert [ids[h.passage.id] for h in alone.retrieve([QUESTION], k=10)[0]] == [i for i, _ in single[:10]]


def test_the_cache_key_holds_the_fusion_and_both_parts_settings(passages) -> None:
    key = index_key(HybridConfig(), passages)
    for other in (HybridConfig(fusion="rrf"), HybridConfig(alpha=0.5), HybridConfig(alpha=0.0),
                  HybridConfig(depth=50), HybridConfig(bm25=BM25Config(k1=1.2)),
                  HybridConfig(dense=DenseConfig(index_type="ivf", nprobe=4)), HybridConfig(dense=DenseConfig(nprobe=2))):
        assert index_key(other, passages) != key
    for same in (HybridConfig(k=1), HybridConfig(name="mine"), HybridConfig(dense=DenseConfig(k=9, device="cpu")),
                 HybridConfig(rrf_k=10)):  # rrf_k does not change a convex hybrid's answers
        assert index_key(same, passages) == key  # query-time settings: the same answers
    rrf = index_key(HybridConfig(fusion="rrf"), passages)
    assert index_key(HybridConfig(fusion="rrf", rrf_k=10), passages) != rrf
    assert index_key(HybridConfig(fusion="rrf", alpha=0.1), passages) == rrf  # alpha does not change RRF's


def test_fusion_settings_leave_the_parts_index_keys_alone(passages) -> None:
    """The parts' indexes are cached under the keys retriever=bm25 / dense use, whatever the fusion."""
    from slm_ray.retrieval.hybrid import HybridRetriever

    for cfg in (HybridConfig(), HybridConfig(fusion="rrf", rrf_k=5), HybridConfig(alpha=0.1)):
        parts = HybridRetriever(cfg, passages)._part_configs()
        assert [index_key(parts[n], passages) for n in ("bm25", "dense")] == \
            [index_key(BM25Config(), passages), index_key(DenseConfig(), passages)]


def test_the_shared_service_caches_hybrid_answers_per_fusion_setting(small_corpus: Path, shared_cache: Path,
                                                                     tmp_path: Path) -> None:
    from slm_ray.composition import compose_config
    from slm_ray.retrieval.service import RetrieverService, service_key

    cache = tmp_path / "cache"  # answers cached afresh, indexes shared with the session
    cache.mkdir()
    (shared_cache / "indexes").mkdir(parents=True, exist_ok=True)
    (cache / "indexes").symlink_to(shared_cache / "indexes")

    def service(*overrides: str) -> RetrieverService:
        cfg = compose_config(["corpus=file", f"corpus.path={small_corpus}", "retriever=hybrid",
                              f"experiment.cache_dir={cache}", *overrides])
        return RetrieverService(service_key(cfg), cfg.retriever.model_dump(by_alias=True), cfg.corpus.model_dump(),
                                str(cache), str(tmp_path), memory_interval_s=0.05)

    first = service()
    hits = first.retrieve([QUESTION], 3)
    assert first.queries_searched == 1 and hits[0][0].passage.title == "List of Nobel laureates in Physics"
    again = service()
    assert again.retrieve([QUESTION], 3) == hits and again.queries_searched == 0  # from the disk cache
    paths = {first._cache_path(3)}
    for overrides in (["retriever.fusion=rrf"], ["retriever.fusion=rrf", "retriever.rrf_k=1"], ["retriever.alpha=0.5"]):
        other = service(*overrides)  # an answer of another fusion or alpha is never served from the cache
        assert other.key != first.key and other._cache_path(3) not in paths
        paths.add(other._cache_path(3))
        other.retrieve([QUESTION], 3)
        assert other.queries_searched == 1 and other.built_now is False  # the parts' indexes reused


def test_hybrid_config_composes_and_names_a_bad_nested_key() -> None:
    from slm_ray.composition import compose_config, compose_hydra
    from slm_ray.errors import ConfigError

    cfg = compose_config(["retriever=hybrid", "retriever.rrf_k=20", "retriever.depth=50",
                          "retriever.dense.index_type=hnsw", "experiment_mode=retriever_context"])
    assert isinstance(cfg.retriever, HybridConfig) and cfg.retriever.dense.index_type == "hnsw"
    assert cfg.run_name.endswith("_hybrid-k5")
    assert (cfg.retriever.fusion, cfg.retriever.alpha) == (HybridConfig().fusion, HybridConfig().alpha)
    # RRF is one setting away (hybrid.yaml leaves fusion and alpha to the schema's defaults)
    rrf = compose_config(["retriever=hybrid", "retriever.fusion=rrf"]).retriever
    assert (rrf.fusion, rrf.name) == ("rrf", "hybrid")
    assert compose_config(["retriever=hybrid", "retriever.alpha=0.3"]).retriever.alpha == 0.3
    assert "retriever.alpha=0.3" in compose_hydra(["retriever=hybrid", "retriever.alpha=0.3"])["overrides"]["task"]
    named = compose_config(["retriever=hybrid_rrf", "retriever.rrf_k=10"]).retriever
    assert (named.fusion, named.name, named.rrf_k) == ("rrf", "hybrid_rrf", 10)
    with pytest.raises(ConfigError, match="retriever.dense.nprob"):
        compose_config(["retriever=hybrid", "+retriever.dense.nprob=3"])
    with pytest.raises(ConfigError, match="retriever.depth=0"):
        compose_config(["retriever=hybrid", "retriever.depth=0"])


def test_a_hybrid_run_records_fused_evidence(make_config, small_corpus: Path) -> None:
    from slm_ray.experiment import PREDICTIONS, output_dir, run_experiment

    cfg = make_config("model=tiny_llama", "dataset.limit=8", "experiment_mode=retriever_context", "retriever=hybrid",
                      "retriever.k=3", "corpus=file", f"corpus.path={small_corpus}")
    results = run_experiment(cfg, show_progress=False)
    assert results["retriever"] == "hybrid" and results["retriever_info"]["type"] == "hybrid"
    assert results["metrics"]["retrieval_recall"]["mean"] > 0.5  # the gold passages of these questions are there
    rows = [json.loads(line) for line in (output_dir(cfg) / PREDICTIONS).read_text().splitlines()]
    assert all([e["rank"] for e in r["retrieved"]] == [1, 2, 3] for r in rows)
    assert (results["retriever_info"]["fusion"], results["retriever_info"]["alpha"]) == ("convex", 0.75)
    assert all(0.0 <= e["score"] <= 1.0 + 1e-9 for r in rows for e in r["retrieved"])  # fused scores, not BM25's


def test_fetch_plans_the_encoder_of_hybrids_dense_part() -> None:
    from slm_ray.composition import compose_config
    from slm_ray.fetch import plan_items

    cfg = compose_config(["retriever=hybrid", "retriever.dense.encoder=all-mpnet-base-v2",
                          "experiment_mode=retriever_context", "model=tiny_llama"])
    assert "retriever.encoder=all-mpnet-base-v2" in [item.what for item in plan_items([cfg])]
