"""A big corpus's dense index is encoded by Ray Data on the real build paths (``ensure_index``, the
sweep's prepare stage, ``slm-ray index``): the same answers as the in-process build, and a killed
build encodes only its missing embedding shards again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slm_ray.config import CorpusConfig, DenseConfig
from slm_ray.data.corpus import builtin_nq_corpus, load_corpus
from slm_ray.retrieval import ray_encode
from slm_ray.retrieval.base import PARTIAL_SUFFIX, build_or_load, ensure_index, index_key
from slm_ray.retrieval.dense import DenseRetriever

ROOT = Path(__file__).resolve().parents[1]
N_PASSAGES, SHARD_SIZE = 150, 50  # three embedding shards
QUERIES = ["who wrote the declaration of independence", "largest planet in the solar system",
           "when did world war two end", "capital city of australia"]
#: Ray Data for any corpus, in shards of SHARD_SIZE; float32 on the CPU, as the in-process reference.
SETTINGS = {"device": "cpu", "dtype": "float32", "ray_encode_min_passages": 0, "ray_encode_shard_size": SHARD_SIZE}


def _write_corpus(path: Path) -> Path:
    """The first passages of the built-in corpus as a JSONL file: not the built-in corpus, so no
    shipped embeddings apply and the encoder really runs."""
    rows = builtin_nq_corpus()[:N_PASSAGES]
    path.write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in rows))
    return path


def _answers(retriever: Any) -> list[list[tuple[str, float]]]:
    return [[(hit.passage.id, round(hit.score, 4)) for hit in hits] for hits in retriever.retrieve(QUERIES, k=5)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, list[list[tuple[str, float]]]]:
    """(corpus file, its passage store, the answers of the in-process build over it)."""
    folder = tmp_path_factory.mktemp("corpus")
    path = _write_corpus(folder / "c.jsonl")
    store = load_corpus(CorpusConfig(name="c", path=str(path)), folder / "cache")
    reference = DenseRetriever(DenseConfig(device="cpu", dtype="float32"), store)
    assert not reference.uses_ray_data()  # the default threshold: encoded in this process
    reference.build()
    return path, store, _answers(reference)


def test_the_threshold_picks_the_path_and_leaves_the_index_key(corpus) -> None:
    _, store, _ = corpus
    ray_cfg = DenseConfig(**SETTINGS)
    assert DenseRetriever(ray_cfg, store).uses_ray_data()
    above = ray_cfg.model_copy(update={"ray_encode_min_passages": N_PASSAGES + 1})
    assert not DenseRetriever(above, store).uses_ray_data()
    assert index_key(ray_cfg, store) == index_key(DenseConfig(device="cpu", dtype="float32"), store)
    # the built-in corpus keeps its shipped embeddings whatever the threshold
    assert not DenseRetriever(DenseConfig(ray_encode_min_passages=0), builtin_nq_corpus()).uses_ray_data()


@pytest.mark.ray
@pytest.mark.slow
def test_ensure_index_encodes_with_ray_data_and_resumes_from_its_shards(local_ray, corpus, tmp_path: Path,
                                                                        monkeypatch) -> None:
    _, store, expected = corpus
    config, cache = DenseConfig(**SETTINGS), tmp_path / "cache"
    folder = cache / "indexes" / index_key(config, store)
    shards = folder.with_name(folder.name + PARTIAL_SUFFIX) / ray_encode.EMBEDDINGS_FOLDER

    # What the driver does before a prepare task: all shards encoded, no index yet.
    assert ray_encode.encode_for_index(config, store, cache)
    assert sorted(p.name for p in shards.glob("shard-*.npy")) == [f"shard-{i:06d}.npy" for i in range(3)]
    assert not folder.exists()

    # A build killed after two shards: only the missing one is encoded again.
    kept = {i: ray_encode.shard_path(shards, i).stat().st_ino for i in (0, 2)}
    ray_encode.shard_path(shards, 1).unlink()
    encoded: list[list[int]] = []
    pool = ray_encode._run_pool

    def recording(config, texts, shard_dir, shard_size, missing, **kwargs):
        encoded.append(list(missing))
        assert all(ray_encode.shard_path(shard_dir, i).stat().st_ino == kept[i] for i in kept)
        return pool(config, texts, shard_dir, shard_size, missing, **kwargs)

    monkeypatch.setattr(ray_encode, "_run_pool", recording)
    assert ensure_index(config, store, cache)
    assert encoded == [[1]]
    assert not shards.parent.exists()  # the build folder goes once the index is in the cache

    retriever, built_now = build_or_load(config, store, cache)
    assert not built_now and _answers(retriever) == expected


@pytest.mark.ray
@pytest.mark.slow
def test_the_prepare_stage_encodes_from_the_driver_before_its_task(local_ray, corpus, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """The index task holds all CPUs of the (one-node) cluster: the driver encodes first, so the
    task finds every shard and only builds FAISS."""
    from slm_ray.composition import compose_config
    from slm_ray.sweeps import prepare
    from slm_ray.sweeps.spec import Trial

    path, store, expected = corpus
    cache = tmp_path / "cache"
    cfg = compose_config(["experiment_mode=retriever_context", "retriever=hybrid", "corpus=file",
                          f"corpus.path={path}", f"experiment.cache_dir={cache}", "tracker=none",
                          "retriever.bm25.shard_size=60",  # and the BM25 part's 3 shards as Ray tasks
                          *(f"retriever.dense.{k}={v}" for k, v in SETTINGS.items())])
    monkeypatch.setattr(prepare, "_model_copy_key", lambda trial: None)  # indexes only
    lines: list[str] = []
    out = prepare.prepare([Trial(0, "t", {}, (), cfg)], str(tmp_path), None, lines.append)
    assert out == {"indexes_built": 1, "indexes_cached": 0, "failed": {}}, lines
    assert any(line.startswith("  encoded   file for hybrid") for line in lines), lines
    assert any(line.startswith("  built     3 bm25 shard(s) of file") for line in lines), lines
    dense, built_now = build_or_load(cfg.retriever.dense, load_corpus(cfg.corpus, cache), cache)
    assert not built_now and _answers(dense) == expected


@pytest.mark.ray
@pytest.mark.slow
def test_slm_ray_index_encodes_a_big_corpus_with_ray_data(corpus, tmp_path: Path) -> None:
    """The command starts a Ray of this machine for the encoding: one progress line a shard."""
    path, store, expected = corpus
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "slm_ray", "index", "corpus=file", f"corpus.path={path}", "retriever=dense",
               f"experiment.cache_dir={cache}", *(f"retriever.{k}={v}" for k, v in SETTINGS.items())]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "built in" in done.stdout and f"({N_PASSAGES} passages)" in done.stdout, done.stdout
    progress = [line for line in done.stderr.splitlines() if "embedding shard" in line and "encoded:" in line]
    assert len(progress) == 3 and "3 of 3" in progress[-1] and "left" in progress[0], done.stderr
    config = DenseConfig(**SETTINGS)
    retriever, built_now = build_or_load(config, load_corpus(CorpusConfig(name="c", path=str(path)), cache), cache)
    assert not built_now and _answers(retriever) == expected
    assert not list((cache / "indexes").glob(f"*{PARTIAL_SUFFIX}"))
