"""Hybrid retrieval: BM25 + dense (real bm25s, FAISS and the packaged all-MiniLM-L6-v2) fused with RRF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_ray.config import BM25Config, DenseConfig, HybridConfig
from slm_ray.data.corpus import load_corpus
from slm_ray.retrieval.base import build_or_load, index_key
from slm_ray.retrieval.hybrid import reciprocal_rank_fusion

QUESTION = "who got the first nobel prize in physics"


def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = reciprocal_rank_fusion([[3, 1, 2], [1, 4]], rrf_k=60, k=3)
    # passage 1: 1/62 + 1/61; passage 3: 1/61; passage 4: 1/62; passage 2: 1/63
    assert [i for i, _ in fused] == [1, 3, 4]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert reciprocal_rank_fusion([[5, 6], [6, 5]], rrf_k=0, k=2) == [(5, 1.5), (6, 1.5)]  # tie: lower index


@pytest.fixture(scope="module")
def passages(small_corpus: Path):
    from slm_ray.config import CorpusConfig

    return load_corpus(CorpusConfig(name="small", path=str(small_corpus)), ".cache")


def test_hybrid_reuses_the_single_indexes_and_ranks_by_fused_score(passages, shared_cache: Path) -> None:
    bm25, _ = build_or_load(BM25Config(), passages, shared_cache)
    dense, _ = build_or_load(DenseConfig(), passages, shared_cache)
    hybrid, built = build_or_load(HybridConfig(depth=20), passages, shared_cache)
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
    assert info["type"] == "hybrid" and info["rrf_k"] == 60 and info["dense"]["index_type"] == "flat"


def test_the_cache_key_holds_the_fusion_and_both_parts_settings(passages) -> None:
    key = index_key(HybridConfig(), passages)
    for other in (HybridConfig(rrf_k=10), HybridConfig(depth=50), HybridConfig(bm25=BM25Config(k1=1.2)),
                  HybridConfig(dense=DenseConfig(index_type="ivf", nprobe=4)), HybridConfig(dense=DenseConfig(nprobe=2))):
        assert index_key(other, passages) != key
    for same in (HybridConfig(k=1), HybridConfig(name="mine"), HybridConfig(dense=DenseConfig(k=9, device="cpu"))):
        assert index_key(same, passages) == key  # query-time settings: the same answers


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
    other = service("retriever.rrf_k=1")
    assert other.key != first.key and other._cache_path(3) != first._cache_path(3)
    other.retrieve([QUESTION], 3)
    assert other.queries_searched == 1


def test_hybrid_config_composes_and_names_a_bad_nested_key() -> None:
    from slm_ray.composition import compose_config
    from slm_ray.errors import ConfigError

    cfg = compose_config(["retriever=hybrid", "retriever.rrf_k=20", "retriever.depth=50",
                          "retriever.dense.index_type=hnsw", "experiment_mode=retriever_context"])
    assert isinstance(cfg.retriever, HybridConfig) and cfg.retriever.dense.index_type == "hnsw"
    assert cfg.run_name.endswith("_hybrid-k5")
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
    assert all(e["score"] <= 2 / 61 + 1e-6 for r in rows for e in r["retrieved"])  # RRF scores, not BM25's


def test_fetch_plans_the_encoder_of_hybrids_dense_part() -> None:
    from slm_ray.composition import compose_config
    from slm_ray.fetch import plan_items

    cfg = compose_config(["retriever=hybrid", "retriever.dense.encoder=all-mpnet-base-v2",
                          "experiment_mode=retriever_context", "model=tiny_llama"])
    assert "retriever.encoder=all-mpnet-base-v2" in [item.what for item in plan_items([cfg])]
