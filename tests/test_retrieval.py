"""Real bm25s and FAISS retrieval, and the on-disk index cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from slm_ray.config import BM25Config, DenseConfig
from slm_ray.data.base import Passage
from slm_ray.data.corpus import builtin_nq_corpus
from slm_ray.data.nq import NQOpenDataset
from slm_ray.evaluation.metrics import retrieval_recall
from slm_ray.retrieval.base import build_or_load, index_key

QUESTION = "who got the first nobel prize in physics"


@pytest.fixture(scope="module")
def corpus() -> list[Passage]:
    return builtin_nq_corpus()


def test_bm25_finds_the_gold_passage_and_recall_is_high(corpus, tmp_path: Path) -> None:
    retriever, built = build_or_load(BM25Config(), corpus, tmp_path)
    assert built
    top = retriever.retrieve([QUESTION], k=3)[0]
    assert len(top) == 3 and top[0].passage.title == "List of Nobel laureates in Physics"
    assert top[0].score >= top[1].score >= top[2].score
    examples = NQOpenDataset(name="nq", path="builtin", limit=200).load()
    hits = retriever.retrieve([e.question for e in examples], k=5)
    recall = sum(retrieval_recall([p.passage.text for p in row], e.answers) for e, row in zip(examples, hits)) / 200
    assert recall > 0.6  # each question's own gold passage is in the corpus


def test_index_is_built_once_and_reused(corpus, tmp_path: Path) -> None:
    first, built_first = build_or_load(BM25Config(k=5), corpus, tmp_path)
    second, built_second = build_or_load(BM25Config(k=2), corpus, tmp_path)  # k is query time only
    assert built_first and not built_second
    assert [h.passage.id for h in second.retrieve([QUESTION], 5)[0]] == [h.passage.id for h in first.retrieve([QUESTION], 5)[0]]
    assert len(list((tmp_path / "indexes").iterdir())) == 1
    assert index_key(BM25Config(), corpus) != index_key(BM25Config(), corpus[:-1])
    assert index_key(BM25Config(), corpus) != index_key(BM25Config(k1=1.2), corpus)


def test_a_corrupt_cached_index_is_rebuilt(corpus, tmp_path: Path) -> None:
    build_or_load(BM25Config(), corpus, tmp_path)
    folder = next((tmp_path / "indexes").iterdir())
    for file in folder.glob("*.npy"):
        file.write_bytes(b"garbage")
    retriever, built = build_or_load(BM25Config(), corpus, tmp_path)
    assert built and retriever.retrieve([QUESTION], 1)[0][0].passage.title == "List of Nobel laureates in Physics"


def test_k_larger_than_the_corpus_returns_every_passage(tmp_path: Path) -> None:
    passages = [Passage("a", "alpha beta"), Passage("b", "gamma delta")]
    retriever, _ = build_or_load(BM25Config(), passages, tmp_path)
    assert len(retriever.retrieve(["alpha"], k=10)[0]) == 2


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_dense_index_types_find_the_gold_passage(index_type: str, corpus, tmp_path: Path) -> None:
    small = corpus[:150]  # the real all-MiniLM-L6-v2 encodes ~50 passages/s on 2 cores
    cfg = DenseConfig(index_type=index_type, nlist=4, nprobe=4)
    retriever, built = build_or_load(cfg, small, tmp_path)
    assert built and retriever.describe()["index_device"] == "cpu"
    top = retriever.retrieve([QUESTION], k=3)[0]
    assert top[0].passage.title == "List of Nobel laureates in Physics"
    again, built_again = build_or_load(cfg, small, tmp_path)
    assert not built_again
    assert [h.passage.id for h in again.retrieve([QUESTION], 3)[0]] == [h.passage.id for h in top]
