"""Corpora that stream into a memory-mapped passage store, and BM25 built in resumable shards."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from slm_ray.config import BM25Config, CorpusConfig
from slm_ray.data.base import Passage
from slm_ray.data.corpus import corpus_fingerprint, load_corpus
from slm_ray.data.passage_store import PassageStore
from slm_ray.errors import DataError
from slm_ray.retrieval import bm25
from slm_ray.retrieval.base import build_or_load, ensure_index, index_key

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(400)] + ["paris", "berlin", "rome", "nile", "everest", "physics", "nobel"]
QUERIES = ["paris berlin", "nobel physics w3", "w17 w250 everest", "nile rome w5 w6", "w399 w1"]


def _passages(n: int, seed: int = 0) -> list[Passage]:
    """Deterministic passages of 12-30 words, some words much more frequent than others."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    return [Passage(f"p{i}", " ".join(rng.choices(WORDS, weights, k=rng.randint(12, 30))), f"Title {i % 97}")
            for i in range(n)]


def _write_tsv(path: Path, passages: list[Passage]) -> Path:
    """DPR's psgs_w100.tsv layout: header id, text, title; texts quoted as DPR quotes them."""
    lines = ["id\ttext\ttitle"]
    lines += [f'{p.id}\t"{p.text.replace(chr(34), chr(34) * 2)}"\t{p.title}' for p in passages]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_jsonl(path: Path, passages: list[Passage]) -> Path:
    path.write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in passages))
    return path


def _load(path: Path, cache: Path, **settings: str) -> PassageStore:
    store = load_corpus(CorpusConfig(name="c", path=str(path), **settings), cache)
    assert isinstance(store, PassageStore)
    return store


# --- the passage store ----------------------------------------------------------------------------


def test_psgs_w100_tsv_reads_as_it_comes(tmp_path: Path) -> None:
    path = tmp_path / "psgs_w100.tsv"
    path.write_text('id\ttext\ttitle\n1\t"Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
                    '2\tMoses was his brother\t"Moses"\n', encoding="utf-8")
    store = _load(path, tmp_path / "cache")  # format auto: from the .tsv suffix
    assert list(store) == [Passage("1", 'Aaron ( or ; "Ahärôn") is a prophet', "Aaron"),
                           Passage("2", "Moses was his brother", "Moses")]
    renamed = tmp_path / "passages.txt"
    renamed.write_bytes(path.read_bytes())
    assert list(_load(renamed, tmp_path / "cache", format="tsv")) == list(store)


def test_a_store_is_the_list_it_replaces(tmp_path: Path) -> None:
    passages = _passages(300)
    for store in (_load(_write_tsv(tmp_path / "c.tsv", passages), tmp_path / "cache"),
                  _load(_write_jsonl(tmp_path / "c.jsonl", passages), tmp_path / "cache")):
        assert len(store) == 300 and store[0] == passages[0] and store[-1] == passages[-1]
        assert store[123] == passages[123] and store[5:250] == passages[5:250] and store[::37] == passages[::37]
        assert list(store) == passages
        assert corpus_fingerprint(store) == store.fingerprint == corpus_fingerprint(list(passages))
        with pytest.raises(IndexError):
            store[300]


def test_a_store_is_written_once_and_reopened(tmp_path: Path) -> None:
    path = _write_tsv(tmp_path / "c.tsv", _passages(50))
    first = _load(path, tmp_path / "cache")
    written = (first.folder / "passages.arrow").stat()
    second = _load(path, tmp_path / "cache")
    assert second.folder == first.folder and (second.folder / "passages.arrow").stat().st_mtime_ns == written.st_mtime_ns
    path.write_text(path.read_text() + "p50\tone more passage\tT\n")
    assert len(_load(path, tmp_path / "cache")) == 51  # an edited file is read again


@pytest.mark.parametrize("line, message", [
    ("p1\t\tT", "c.tsv:3: 'text' is empty (expected a non-empty string)"),
    ("p0\tsome text\tT", "c.tsv:3: duplicate passage id 'p0' (first at c.tsv:2; each passage id must be unique)"),
    ("\tsome text\tT", "c.tsv:3: 'id' is empty (expected a non-empty string or a number, unique in the file)"),
])
def test_a_bad_row_is_one_line_and_leaves_no_store(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.tsv"
    path.write_text(f"id\ttext\ttitle\np0\tfirst text\tT\n{line}\np2\tlast text\tT\n")
    with pytest.raises(DataError) as raised:
        _load(path, tmp_path / "cache")
    assert str(raised.value) == message.replace("c.tsv", str(path))
    assert not (tmp_path / "cache").exists()  # no staging folder, no lock file, no folder made for them


def test_a_duplicate_far_apart_is_named_with_both_rows(tmp_path: Path) -> None:
    passages = _passages(70_000)  # two chunks of the store's writer
    passages[69_000] = Passage("p12", "the same id again", "")
    with pytest.raises(DataError, match=r"c\.jsonl:69001: duplicate passage id 'p12' \(first at .*c\.jsonl:13;"):
        _load(_write_jsonl(tmp_path / "c.jsonl", passages), tmp_path / "cache")


# --- BM25 over a store, in shards ------------------------------------------------------------------


def _answers(retriever) -> list[list[tuple[str, float]]]:
    return [[(hit.passage.id, round(hit.score, 5)) for hit in hits] for hits in retriever.retrieve(QUERIES, 5)]


@pytest.mark.parametrize("shard_size", [500_000, 70])
def test_store_backed_bm25_answers_as_the_list_backed_one(tmp_path: Path, shard_size: int) -> None:
    passages = _passages(400)
    store = _load(_write_tsv(tmp_path / "c.tsv", passages), tmp_path / "cache")
    config = BM25Config(shard_size=shard_size)
    from_list = build_or_load(config, passages, tmp_path / "list-cache")[0]
    from_store, built = build_or_load(config, store, tmp_path / "cache")
    assert built and _answers(from_store) == _answers(from_list)
    assert from_store.describe()["shards"] == (1 if shard_size > 400 else 6)
    reloaded, built = build_or_load(config, store, tmp_path / "cache")
    assert not built and _answers(reloaded) == _answers(from_list)


def test_one_shard_is_the_unsharded_index_with_its_key(tmp_path: Path) -> None:
    passages = _passages(100)
    assert index_key(BM25Config(shard_size=100), passages) == index_key(BM25Config(), passages)
    assert index_key(BM25Config(shard_size=99), passages) != index_key(BM25Config(), passages)
    retriever = build_or_load(BM25Config(shard_size=100), passages, tmp_path)[0]
    folder = tmp_path / "indexes" / index_key(BM25Config(), passages)
    assert (folder / "params.index.json").exists() and not (folder / "shards").exists()
    assert _answers(retriever) == _answers(build_or_load(BM25Config(), passages, tmp_path / "other")[0])


def test_shards_merge_by_score(tmp_path: Path) -> None:
    """Each query's hits are the best of all shards' hits, in descending score."""
    passages = _passages(300)
    retriever = build_or_load(BM25Config(shard_size=64), passages, tmp_path)[0]
    for shard_hits, hits in zip(_per_shard_hits(retriever), retriever.search(QUERIES, 5)):
        assert [s for _, s in hits] == sorted((s for _, s in shard_hits), reverse=True)[:5]
        assert all(0 <= i < 300 for i, _ in hits)


def _per_shard_hits(retriever) -> list[list[tuple[int, float]]]:
    per_query: list[list[tuple[int, float]]] = [[] for _ in QUERIES]
    tokens = bm25.bm25s_module().tokenization.convert_tokenized_to_string_list(retriever._tokenize(QUERIES))
    for start, model in retriever._shards:
        ids, scores = model.retrieve(tokens, k=5, show_progress=False)
        for found, row_ids, row_scores in zip(per_query, ids, scores):
            found.extend((int(i) + start, float(s)) for i, s in zip(row_ids, row_scores))
    return per_query


CHILD = """
import sys, time
from slm_ray.config import BM25Config, CorpusConfig
from slm_ray.data.corpus import load_corpus
from slm_ray.retrieval import bm25
from slm_ray.retrieval.base import ensure_index

original = bm25._build_shard
def slow(*args):  # slow enough for the test to kill this process between two shards
    time.sleep(0.5)
    return original(*args)
bm25._build_shard = slow
corpus, cache = sys.argv[1], sys.argv[2]
ensure_index(BM25Config(shard_size=int(sys.argv[3])), load_corpus(CorpusConfig(name="c", path=corpus), cache), cache)
"""


def test_a_killed_sharded_build_resumes_with_the_missing_shards(tmp_path: Path, monkeypatch) -> None:
    corpus, cache, shard_size = _write_tsv(tmp_path / "c.tsv", _passages(3000)), tmp_path / "cache", 200
    config = BM25Config(shard_size=shard_size)
    store = _load(corpus, cache)
    folder = cache / "indexes" / index_key(config, store)
    partial = folder.with_name(folder.name + ".partial")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(cache), str(shard_size)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (partial.is_dir() and len([p for p in partial.iterdir() if not p.name.startswith(".")]) >= 3):
            assert child.poll() is None and time.monotonic() < deadline, "the build ended before it was killed"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    kept = {int(p.name): (p / "data.csc.index.npy").stat().st_ino for p in partial.iterdir() if not p.name.startswith(".")}
    assert 3 <= len(kept) < 15 and not folder.exists()

    built: list[int] = []
    original = bm25._build_shard

    def recording(retriever, number, start, stop, work):
        built.append(number)
        return original(retriever, number, start, stop, work)

    monkeypatch.setattr(bm25, "_build_shard", recording)
    resumed, built_now = build_or_load(config, store, cache)
    assert built_now and sorted(built) == sorted(set(range(15)) - set(kept))
    for number, inode in kept.items():  # the very files of the killed build, linked into the index
        assert (folder / "shards" / f"{number:05d}" / "data.csc.index.npy").stat().st_ino == inode
    assert not partial.exists()

    monkeypatch.setattr(bm25, "_build_shard", original)
    uninterrupted = build_or_load(config, _passages(3000), tmp_path / "other-cache")[0]
    assert _answers(resumed) == _answers(uninterrupted)
    assert not build_or_load(config, store, cache)[1]  # complete, verified, loaded


def test_ensure_index_over_a_store_leaves_only_the_index(tmp_path: Path) -> None:
    store = _load(_write_jsonl(tmp_path / "c.jsonl", _passages(500)), tmp_path / "cache")
    assert ensure_index(BM25Config(shard_size=128), store, tmp_path / "cache")
    names = sorted(p.name for p in (tmp_path / "cache" / "indexes").iterdir() if not p.name.startswith("."))
    assert names == [index_key(BM25Config(shard_size=128), store)]


def test_a_large_file_has_the_same_crc_read_or_mapped(tmp_path: Path, monkeypatch) -> None:
    from slm_ray.store import cache_manifest

    path = tmp_path / "blob"
    path.write_bytes(random.Random(1).randbytes(3_000_000))
    mapped = cache_manifest.file_crc32(path)
    monkeypatch.setattr(cache_manifest, "MAP_MAX_BYTES", 1_000_000)
    monkeypatch.setattr(cache_manifest, "_CHUNK", 1 << 20)
    assert cache_manifest.file_crc32(path) == mapped == zlib.crc32(path.read_bytes())


# --- slm-ray index: the build as a command of its own -------------------------------------------------


@pytest.mark.ray
def test_slm_ray_index_builds_once_with_progress_and_a_run_only_loads_it(tmp_path: Path) -> None:
    """The command builds the sharded index where runs look for it (its shards as Ray tasks on a Ray
    of its own, one progress line a shard), says "cached" when run again without starting Ray, and an
    experiment over the same corpus builds nothing."""
    from slm_ray.composition import compose_config
    from slm_ray.data.corpus import load_corpus as load

    corpus = _write_tsv(tmp_path / "psgs.tsv", _passages(900))
    cache = tmp_path / "cache"
    args = ["index", "corpus=file", f"corpus.path={corpus}", "retriever.shard_size=300", f"experiment.cache_dir={cache}",
            "retriever.k=3,7"]  # k does not change an index: one build
    command = [sys.executable, "-m", "slm_ray", *args]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("built in") == 1 and "(900 passages)" in first.stdout, first.stdout
    progress = [line for line in first.stderr.splitlines() if "bm25 shard" in line]
    assert len(progress) == 3 and "3 of 3 built" in progress[-1] and "left" in progress[0], first.stderr
    assert "building 3 of 3 shards as Ray tasks" in first.stderr, first.stderr
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "cached in" in again.stdout and "bm25" not in again.stderr, again.stdout
    cfg = compose_config(args[1:-1])
    assert ensure_index(cfg.retriever, load(cfg.corpus, cache), cache) is False  # what a run finds: built


def test_slm_ray_index_refuses_a_bad_value_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "slm_ray", "index", "corpus=file", "corpus.path=missing.tsv",
                           f"experiment.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "missing.tsv" in done.stderr, done.stderr
    assert not (tmp_path / "cache" / "indexes").exists()
