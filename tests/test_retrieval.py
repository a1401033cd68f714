"""Real bm25s and FAISS retrieval, and the on-disk index cache."""

from __future__ import annotations

import os
import time
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


def _indexes(cache: Path) -> list[Path]:
    """The index folders of a cache (not its hidden lock files or staging folders)."""
    return [p for p in (cache / "indexes").iterdir() if not p.name.startswith(".")]


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
    assert len(_indexes(tmp_path)) == 1
    assert index_key(BM25Config(), corpus) != index_key(BM25Config(), corpus[:-1])
    assert index_key(BM25Config(), corpus) != index_key(BM25Config(k1=1.2), corpus)


def test_a_corrupt_cached_index_is_rebuilt(corpus, tmp_path: Path) -> None:
    build_or_load(BM25Config(), corpus, tmp_path)
    folder = _indexes(tmp_path)[0]
    for file in folder.glob("*.npy"):
        file.write_bytes(b"garbage")
    retriever, built = build_or_load(BM25Config(), corpus, tmp_path)
    assert built and retriever.retrieve([QUESTION], 1)[0][0].passage.title == "List of Nobel laureates in Physics"


def _build_in_child(cache: str, passages: list, start, results) -> None:
    from slm_ray.retrieval.bm25 import BM25Retriever

    original = BM25Retriever.build

    def slow_build(self) -> None:  # a build long enough for the two processes to overlap
        time.sleep(1.5)
        original(self)

    BM25Retriever.build = slow_build
    start.wait()
    _, built = build_or_load(BM25Config(), passages, cache)
    results.put(built)


def test_two_processes_wanting_one_index_build_it_once(tmp_path: Path, race_two_processes) -> None:
    """Two runs started together (or two sweep workers) build an index once; the other loads it."""
    passages = [Passage(str(i), f"passage {i} about topic {i % 7}") for i in range(50)]
    assert race_two_processes(_build_in_child, str(tmp_path), passages) == [False, True]
    assert len(_indexes(tmp_path)) == 1


def test_a_lost_rename_race_keeps_the_other_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_ray.store import io

    target = tmp_path / "entry"
    real_replace = os.replace

    def other_process_first(src, dst):  # another process renames its copy into place just before us
        if Path(dst) == target and not target.exists():
            target.mkdir()
            (target / "theirs").write_text("x")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", other_process_first)
    with io.atomic_folder(target) as staging:
        (staging / "ours").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # our staging folder is gone


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


def test_a_corpus_of_stopwords_only_is_one_line(tmp_path: Path) -> None:
    from slm_ray.config import BM25Config
    from slm_ray.data.base import Passage
    from slm_ray.errors import DataError
    from slm_ray.retrieval.base import build_or_load

    passages = [Passage("1", "a the of"), Passage("2", "an and")]
    with pytest.raises(DataError, match="no passage of the corpus has a word left once stopwords"):
        build_or_load(BM25Config(), passages, tmp_path)
    assert not list((tmp_path / "indexes").glob("bm25-*"))


# --- the built-in corpus's embeddings, shipped with the package -------------------------------------------


def _dense_cpu_float32() -> DenseConfig:
    return DenseConfig(dtype="float32", device="cpu")


def test_the_shipped_embeddings_are_the_default_encoders_of_the_built_in_corpus() -> None:
    import numpy as np

    from slm_ray.data.corpus import corpus_fingerprint
    from slm_ray.retrieval.base import passage_text
    from slm_ray.retrieval.dense import DenseRetriever
    from slm_ray.retrieval.prebuilt import prebuilt_embeddings

    passages = builtin_nq_corpus()
    config = _dense_cpu_float32()
    shipped = prebuilt_embeddings(config.encoder, "float32", corpus_fingerprint(passages))
    assert shipped is not None and shipped.shape == (len(passages), 384)
    sample = [0, 1, 2, 1000, 2599, 2600, len(passages) - 1]  # gold passages and distractors
    fresh = DenseRetriever(config, passages).encode([passage_text(passages[i]) for i in sample])
    assert np.allclose(fresh, shipped[sample], atol=1e-4)


def test_shipped_embeddings_serve_only_their_own_encoder_dtype_corpus_and_bytes(tmp_path: Path, monkeypatch,
                                                                                caplog) -> None:
    import shutil

    import slm_ray.retrieval.prebuilt as prebuilt
    from slm_ray.data.corpus import corpus_fingerprint

    corpus = corpus_fingerprint(builtin_nq_corpus())
    encoder = _dense_cpu_float32().encoder
    assert prebuilt.prebuilt_embeddings(encoder, "bfloat16", corpus) is None
    assert prebuilt.prebuilt_embeddings("sentence-transformers/all-mpnet-base-v2", "float32", corpus) is None
    assert prebuilt.prebuilt_embeddings(encoder, "float32", corpus_fingerprint(builtin_nq_corpus()[:-1])) is None
    damaged = tmp_path / prebuilt.EMBEDDINGS.name
    shutil.copy(prebuilt.EMBEDDINGS, damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    monkeypatch.setattr(prebuilt, "EMBEDDINGS", damaged)
    assert prebuilt.prebuilt_embeddings(encoder, "float32", corpus) is None
    assert "does not match its recorded SHA-256" in caplog.text


def test_a_dense_index_of_the_built_in_corpus_is_built_without_encoding_it(tmp_path: Path, monkeypatch) -> None:
    from slm_ray.retrieval.dense import DenseRetriever

    monkeypatch.setattr(DenseRetriever, "encode_passages", lambda self, texts: pytest.fail("the corpus was encoded"))
    passages = builtin_nq_corpus()
    retriever, built = build_or_load(_dense_cpu_float32(), passages, tmp_path)
    assert built
    [hits] = retriever.retrieve([passages[5].text[:200]], 3)  # a question's words: its own passage first
    assert hits[0].passage.id == passages[5].id
