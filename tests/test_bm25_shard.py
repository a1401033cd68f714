"""The compact vocabulary a loaded BM25 shard uses in place of bm25s' dict: same answers, less memory."""

from __future__ import annotations

import random

import pytest

from slm_ray.retrieval.bm25_shard import CompactVocab


def test_answers_as_the_dict_does_for_every_kind_of_token() -> None:
    rng = random.Random(0)
    words = {"", "a", "ab", "abc", "zz", "naïve", "東京", "ßtraße", "x" * 300, "b"}
    words |= {"".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 12))) for _ in range(2000)}
    vocab = {word: i for i, word in enumerate(sorted(words, key=lambda w: rng.random()))}
    compact = CompactVocab(vocab)
    assert len(compact) == len(vocab) and set(compact) == set(vocab)
    for word in vocab:
        assert word in compact and compact[word] == vocab[word]
    for missing in ("abcdefghabcdefghz", "aa" * 20, "東", "naive", " ", "A"):
        if missing not in vocab:
            assert missing not in compact
            with pytest.raises(KeyError):
                compact[missing]
    assert 3 not in compact  # bm25s only asks for strings; anything else is absent
    assert compact.id_set() == range(len(vocab))  # bm25s numbers tokens 0..n-1
    assert CompactVocab({"a": 5, "b": 7}).id_set() == {5, 7}
    assert compact.nbytes < 40 * len(vocab)


def test_a_loaded_index_answers_as_the_index_it_was_built_as(tmp_path) -> None:
    """The built-in corpus, in two shards: built in memory against saved, loaded memory-mapped with
    the compact vocabulary (ranks and scores equal)."""
    from slm_ray.config import BM25Config
    from slm_ray.data.builtin import NQ_OPEN_ORACLE
    from slm_ray.data.corpus import builtin_nq_corpus
    from slm_ray.data.files import iter_jsonl
    from slm_ray.retrieval.bm25 import BM25Retriever

    passages = builtin_nq_corpus()
    config = BM25Config(shard_size=2000)
    questions = [row["question"] for _, row in zip(range(40), iter_jsonl(NQ_OPEN_ORACLE))] + ["zzzz qqqq", ""]
    built = BM25Retriever(config, passages)
    built.build()
    built.save(tmp_path)
    loaded = BM25Retriever(config, passages)
    loaded.load(tmp_path)
    assert all(isinstance(model.vocab_dict, CompactVocab) for _, model in loaded._shards)
    assert all(type(model).__name__ == "LeanBM25" for _, model in loaded._shards)
    assert loaded.search(questions, 5) == built.search(questions, 5)  # scores bit for bit, ties in order


def test_buffered_scoring_equals_bm25s_add_at() -> None:
    """Long columns, duplicated query tokens: the sums of bm25s' np.add.at, exactly."""
    import numpy as np
    import scipy.sparse as sp

    from slm_ray.retrieval.bm25_shard import _sum_columns, bm25s_module

    rng = np.random.default_rng(0)
    matrix = sp.random(5000, 300, density=0.3, format="csc", random_state=1, dtype=np.float32)
    query = rng.integers(0, 300, size=40)
    query[5] = query[6]
    args = (matrix.data, matrix.indptr, matrix.indices, 5000, query, np.float32)
    expected = bm25s_module().BM25._compute_relevance_from_scores(*args)
    assert np.array_equal(_sum_columns(*args), expected)
