"""BM25 shards built as Ray tasks from the driver (``slm_ray.retrieval.ray_shards``): only the
missing ones, in parallel, and the index they make answers as one built in this process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slm_ray.config import BM25Config, HybridConfig
from slm_ray.retrieval.base import build_or_load, index_key
from slm_ray.retrieval.ray_shards import build_shards_with_ray, wants_ray_shards

from tests.test_scale import QUERIES, _answers, _load, _passages, _write_tsv

def test_which_indexes_get_shard_tasks(tmp_path: Path) -> None:
    passages = _passages(900)
    assert wants_ray_shards(BM25Config(shard_size=300), passages, tmp_path)
    assert wants_ray_shards(HybridConfig(bm25=BM25Config(shard_size=300)), passages, tmp_path)
    assert not wants_ray_shards(BM25Config(), passages, tmp_path)  # one shard: built where it is needed
    assert not wants_ray_shards(HybridConfig(), passages, tmp_path)


@pytest.mark.ray
def test_shard_tasks_build_the_missing_shards_and_the_index_only_links_them(tmp_path: Path, local_ray) -> None:
    corpus, cache = _write_tsv(tmp_path / "c.tsv", _passages(1500)), tmp_path / "cache"
    config = BM25Config(shard_size=300)
    store = _load(corpus, cache)
    lines: list[str] = []
    assert build_shards_with_ray(config, store, cache, echo=lines.append) == 5
    folder = cache / "indexes" / index_key(config, store)
    partial = folder.with_name(folder.name + ".partial")
    assert sorted(p.name for p in partial.iterdir()) == [f"{n:05d}" for n in range(5)]
    assert "5 of 5 built" in lines[-1] and "left" in lines[1], lines

    shutil.rmtree(partial / "00003")  # as a killed run leaves it: one shard missing
    kept = {p.name: (p / "data.csc.index.npy").stat().st_ino for p in partial.iterdir()}
    lines.clear()
    assert build_shards_with_ray(config, store, cache, echo=lines.append) == 1
    assert "1 of 5 shards" in lines[0], lines
    for name, inode in kept.items():
        assert (partial / name / "data.csc.index.npy").stat().st_ino == inode

    import slm_ray.retrieval.bm25 as bm25

    original, calls = bm25._build_shard, []
    bm25._build_shard = lambda *args: calls.append(args[1]) or original(*args)
    try:
        linked, built_now = build_or_load(config, store, cache)
    finally:
        bm25._build_shard = original
    assert built_now and calls == [] and not partial.exists()  # every shard came from the tasks
    uninterrupted = build_or_load(config, _passages(1500), tmp_path / "other-cache")[0]
    assert _answers(linked) == _answers(uninterrupted) and len(_answers(linked)) == len(QUERIES)
    assert build_shards_with_ray(config, store, cache) == 0  # cached: nothing to do


@pytest.mark.ray
def test_a_shard_that_cannot_be_built_is_its_own_one_line_error(tmp_path: Path, local_ray) -> None:
    """The second shard holds only stopwords: the DataError of its task, not Ray's traceback."""
    from slm_ray.data.base import Passage
    from slm_ray.errors import DataError

    passages = _passages(300) + [Passage(f"s{i}", "the of and", "") for i in range(300)]
    with pytest.raises(DataError, match="no passage of the corpus has a word left") as caught:
        build_shards_with_ray(BM25Config(shard_size=300), passages, tmp_path / "cache", echo=lambda text: None)
    assert "\n" not in str(caught.value) and "ray::" not in str(caught.value)
