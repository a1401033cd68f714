"""Encoding a corpus with Ray Data: the same embeddings as in-process, and a rerun encodes only missing shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slm_ray.config import DenseConfig
from slm_ray.data.corpus import builtin_nq_corpus
from slm_ray.retrieval.base import passage_text
from slm_ray.retrieval.dense import DenseRetriever
from slm_ray.retrieval.ray_encode import LAYOUT_FILE, encode_in_process, encode_with_ray_data, shard_path


@pytest.mark.ray
def test_ray_data_shards_match_in_process_encoding_and_resume(local_ray, tmp_path: Path) -> None:
    config = DenseConfig(device="cpu", dtype="float32")
    texts = [passage_text(p) for p in builtin_nq_corpus()[:200]]
    expected = DenseRetriever(config, []).encode(texts)
    shards = tmp_path / "shards"
    got = encode_with_ray_data(config, texts, shards, shard_size=60, concurrency=1)
    assert got.shape == expected.shape == (200, 384) and np.allclose(got, expected, atol=1e-5)
    assert sorted(p.name for p in shards.iterdir() if p.name != LAYOUT_FILE) == [shard_path(shards, i).name for i in range(4)]  # no partials

    # A rerun keeps the shards it finds (a sentinel shows shard 0 was not encoded again) and encodes the rest.
    np.save(shard_path(shards, 0), np.zeros((60, 384), dtype=np.float32))
    shard_path(shards, 2).unlink()
    again = encode_with_ray_data(config, texts, shards, shard_size=60, concurrency=1)
    assert not again[:60].any()
    assert np.allclose(again[60:], expected[60:], atol=1e-5)


class _CountingEncoder:
    """Stands in for the retriever: each row is its text's number, and every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        return np.asarray([[float(t)] for t in texts], dtype=np.float32)


def test_shards_cut_for_another_shard_size_are_encoded_again(tmp_path: Path) -> None:
    """A shard's number means other passages under another shard size: such shards are not reused."""
    texts = [str(i) for i in range(250)]
    first = _CountingEncoder()
    assert encode_in_process(first, texts, tmp_path, 100).ravel().tolist() == list(range(250))
    assert len(first.calls) == 3
    again = _CountingEncoder()
    encode_in_process(again, texts, tmp_path, 100)
    assert again.calls == []  # all kept
    other = _CountingEncoder()
    assert encode_in_process(other, texts, tmp_path, 50).ravel().tolist() == list(range(250))
    assert len(other.calls) == 5
