"""Retrieval indexes shared through S3 (``experiment.index_store``), against a real S3 endpoint (moto's
server, tests/conftest.py): built once and uploaded with its marker last, downloaded by a machine
with an empty cache instead of built, and an upload without its marker (or with damaged files) ignored."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slm_ray.config import BM25Config, DenseConfig
from slm_ray.data.base import Passage
from slm_ray.errors import ConfigError, StorageError
from slm_ray.retrieval import bm25
from slm_ray.retrieval.base import build_or_load, ensure_index, ensure_index_origin, index_key
from slm_ray.retrieval.index_store import MARKER
from slm_ray.store.cache_manifest import MANIFEST_NAME

WORDS = [f"w{i}" for i in range(150)] + ["paris", "berlin", "rome", "nile", "everest", "physics", "nobel"]
QUERIES = ["paris berlin", "nobel physics w3", "w17 w120 everest", "nile rome w5 w6"]


def _passages(n: int, seed: int = 0) -> list[Passage]:
    rng = random.Random(seed)
    return [Passage(f"p{i}", " ".join(rng.choices(WORDS, k=rng.randint(8, 20))), f"Title {i % 17}") for i in range(n)]


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def _answers(retriever: Any) -> list[list[tuple[int, float]]]:
    return retriever.search(QUERIES, 5)


def _no_build(monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
    """Any build now fails the test: the index must come from the store."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("built, though the store holds the index")

    monkeypatch.setattr(cls, "build_into", refuse)


@pytest.fixture
def store(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/team/indexes"


def test_a_built_index_is_uploaded_with_its_marker_last(store: str, s3_client: Any, s3_bucket: str,
                                                        tmp_path: Path) -> None:
    passages = _passages(60)
    config = BM25Config(shard_size=25)  # three shards: the sharded layout travels too
    origin = ensure_index_origin(config, passages, tmp_path / "cache", store)
    key = index_key(config, passages)
    assert origin.how == "built" and origin.uploaded_to == f"{store}/{key}/"
    objects = _keys(s3_client, s3_bucket, f"team/indexes/{key}/")
    marker = json.loads(s3_client.get_object(Bucket=s3_bucket, Key=f"team/indexes/{key}/{MARKER}")["Body"].read())
    generation = f"team/indexes/{key}/{marker['generation']}/"
    assert objects == sorted([f"team/indexes/{key}/{MARKER}"] + [generation + name for name in marker["files"]])
    local = tmp_path / "cache" / "indexes" / key
    assert {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()} == set(marker["files"])
    assert MANIFEST_NAME in marker["files"] and f"{bm25.SHARDS_FOLDER}/00002/{MANIFEST_NAME}" in marker["files"]
    # cached here and already in the store: nothing uploaded again
    assert ensure_index_origin(config, passages, tmp_path / "cache", store).describe() == "cached"
    assert _keys(s3_client, s3_bucket, f"team/indexes/{key}/") == objects


def test_an_empty_cache_downloads_the_index_instead_of_building_it(store: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    passages = _passages(60)
    config = BM25Config(shard_size=25)
    built, built_now = build_or_load(config, passages, tmp_path / "builder", store)
    assert built_now
    _no_build(monkeypatch, bm25.BM25Retriever)
    assert ensure_index(config, passages, tmp_path / "node-a", store) is False  # the prepare stage's call
    origin = ensure_index_origin(config, passages, tmp_path / "node-b", store)
    assert origin.how == "downloaded" and origin.source == f"{store}/{index_key(config, passages)}/"
    loaded, built_now = build_or_load(config, passages, tmp_path / "node-c", store)
    assert built_now is False and _answers(loaded) == _answers(built)
    again, _ = build_or_load(config, passages, tmp_path / "node-a")  # a verified cache entry like any other
    assert _answers(again) == _answers(built)


def test_an_upload_without_its_marker_is_ignored_and_the_index_rebuilt(store: str, s3_client: Any, s3_bucket: str,
                                                                       tmp_path: Path) -> None:
    passages = _passages(40)
    config = BM25Config()
    ensure_index(config, passages, tmp_path / "builder", store)
    key = index_key(config, passages)
    s3_client.delete_object(Bucket=s3_bucket, Key=f"team/indexes/{key}/{MARKER}")  # cut before the marker
    origin = ensure_index_origin(config, passages, tmp_path / "other", store)
    assert origin.how == "built" and origin.uploaded_to  # and uploaded whole this time
    assert ensure_index_origin(config, passages, tmp_path / "third", store).how == "downloaded"


def test_a_damaged_stored_copy_is_ignored_and_replaced(store: str, s3_client: Any, s3_bucket: str,
                                                       tmp_path: Path) -> None:
    passages = _passages(40)
    config = BM25Config()
    ensure_index(config, passages, tmp_path / "builder", store)
    key = index_key(config, passages)
    marker = json.loads(s3_client.get_object(Bucket=s3_bucket, Key=f"team/indexes/{key}/{MARKER}")["Body"].read())
    name = next(n for n in marker["files"] if n.endswith(".npy"))
    object_key = f"team/indexes/{key}/{marker['generation']}/{name}"
    data = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=object_key)["Body"].read())
    data[-1] ^= 0xFF  # same size, other bytes: only the manifest's CRC sees it
    s3_client.put_object(Bucket=s3_bucket, Key=object_key, Body=bytes(data))
    assert ensure_index(config, passages, tmp_path / "other", store) is True
    local = tmp_path / "other" / "indexes"
    assert [p.name for p in local.iterdir() if not p.name.endswith(".lock")] == [key]  # no staging left behind
    assert ensure_index_origin(config, passages, tmp_path / "third", store).how == "downloaded"


def test_a_cached_index_the_store_lacks_is_uploaded_by_the_index_command_not_by_a_run(
        store: str, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    passages = _passages(30)
    config = BM25Config()
    ensure_index(config, passages, tmp_path / "cache")  # built before index_store was set
    key = index_key(config, passages)
    build_or_load(config, passages, tmp_path / "cache", store)  # a run loading it asks S3 nothing
    assert _keys(s3_client, s3_bucket, "team/") == []
    origin = ensure_index_origin(config, passages, tmp_path / "cache", store)
    assert origin.describe() == f"cached (uploaded to {store}/{key}/)"
    assert f"team/indexes/{key}/{MARKER}" in _keys(s3_client, s3_bucket, "team/")


@pytest.mark.slow  # the encoder's load and a dense build: about a minute on 2 busy cores
def test_a_dense_index_travels_too(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_ray.retrieval.dense import DenseRetriever

    passages = _passages(12)
    config = DenseConfig(dtype="float32", device="cpu")
    built, built_now = build_or_load(config, passages, tmp_path / "builder", store)
    assert built_now
    _no_build(monkeypatch, DenseRetriever)
    loaded, built_now = build_or_load(config, passages, tmp_path / "node", store)
    assert built_now is False and _answers(loaded) == _answers(built)


def test_a_missing_bucket_is_one_line_naming_it_before_any_build(s3_env: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _no_build(monkeypatch, bm25.BM25Retriever)
    with pytest.raises(StorageError, match="s3 bucket not found: no-such-bucket-x1 .*s3://no-such-bucket-x1/idx/"):
        ensure_index(BM25Config(), _passages(20), tmp_path / "cache", "s3://no-such-bucket-x1/idx")


def test_missing_credentials_are_one_line_naming_the_store(s3_env: str, s3_bucket: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    with pytest.raises(StorageError, match=f"no AWS credentials found for s3://{s3_bucket}/idx/"):
        ensure_index(BM25Config(), _passages(20), tmp_path / "cache", f"s3://{s3_bucket}/idx")


@pytest.mark.parametrize("value", ["/shared/indexes", "s3://", "gs://bucket/x"])
def test_index_store_must_be_an_s3_folder(value: str) -> None:
    from slm_ray.composition import compose_config

    with pytest.raises(ConfigError, match="experiment.index_store"):
        compose_config([f"experiment.index_store={value}"])


def _index_command(tmp_path: Path, cache: str, store: str, corpus: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slm_ray", "index", "corpus=file", f"corpus.path={corpus}",
                           f"experiment.cache_dir={tmp_path / cache}", f"experiment.index_store={store}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three commands in fresh interpreters: about 40 s
def test_slm_ray_index_says_where_the_index_came_from(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      ) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-nobody-may-print")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n"
                              for p in _passages(50)))
    first = _index_command(tmp_path, "cache-a", store, corpus)
    assert first.returncode == 0, first.stderr
    assert "built in" in first.stdout and f"(uploaded to {store}/bm25-" in first.stdout, first.stdout
    second = _index_command(tmp_path, "cache-b", store, corpus)
    assert second.returncode == 0, second.stderr
    assert f"downloaded from {store}/bm25-" in second.stdout and "uploaded" not in second.stdout, second.stdout
    bad = _index_command(tmp_path, "cache-c", "s3://no-such-bucket-x2/idx", corpus)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and bad.stderr.endswith(errors[0] + "\n"), bad.stderr
    assert "s3://no-such-bucket-x2/idx/" in errors[0] and "bucket not found" in errors[0], bad.stderr
    for done in (first, second, bad):
        assert "a-secret-nobody-may-print" not in done.stdout + done.stderr


def test_a_sweeps_prepare_task_uploads_and_a_retriever_actor_on_another_node_downloads(
        store: str, tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bodies of the prepare task and the retriever actor, called here (no Ray): a cluster whose
    nodes have caches of their own builds the index once."""
    from slm_ray.retrieval.service import RetrieverService
    from slm_ray.sweeps.prepare import build_index

    monkeypatch.chdir(tmp_path)  # both chdir into the driver's folder
    corpus = {"name": "small", "path": str(small_corpus)}
    retriever = BM25Config().model_dump(by_alias=True)
    prepared = build_index(retriever, corpus, str(tmp_path / "head-cache"), str(tmp_path), 1, store)
    assert prepared["built_now"] and f"(uploaded to {store}/bm25-" in prepared["how"], prepared
    _no_build(monkeypatch, bm25.BM25Retriever)
    service = RetrieverService("bm25-x", retriever, corpus, str(tmp_path / "worker-cache"), str(tmp_path),
                               memory_interval_s=0.05, index_store=store)
    service.warmup()
    assert service.built_now is False and service.retrieve(["who wrote the song"], 3)[0]
    assert (tmp_path / "worker-cache" / "indexes" / service.index_key).is_dir()
