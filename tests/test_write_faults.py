"""Write faults under the cache and the output folder: a read-only file system, a full disk. Each is
one line naming the folder and the setting that chose it, exit 2, no staging folder left, and no
answer already written lost (issue 19, class 3).

The faults are real: a tmpfs mounted read-only, or so small that it fills. Root ignores file modes
(chmod 555 does not stop it), and a read-only mount stops everyone; mounting needs root with
CAP_SYS_ADMIN, so these tests skip where that is missing. Every command runs as a user runs it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from slm_ray.errors import FolderUnusable, unwritable
from slm_ray.store.run_folder import PREDICTIONS, RESULTS, read_predictions

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "tracker=none", "experiment.bootstrap_resamples=20"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``mount(name, options)``: a tmpfs at ``tmp_path/name`` (``ro``, ``size=64k``, ...), unmounted
    after the test."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        path = tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _slm_ray(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "slm_ray", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_error(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]


def _leftovers(folder: Path) -> list[str]:
    """Staging folders, lock files and set-aside entries of a cache build."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".lock" not in p.name or p.is_dir())


# --- the one mapping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code, why, advice", [
    (errno.EROFS, "the file system is read-only", "(choose another experiment.cache_dir)"),
    (errno.ENOSPC, "the disk is full", "(free space there, or choose another experiment.cache_dir)"),
    (errno.EDQUOT, "the disk quota is exceeded", "(free space there, or choose another experiment.cache_dir)"),
    (errno.EACCES, "permission denied", "(make it writable, or choose another experiment.cache_dir)"),
    (errno.EFBIG, "the file size limit is reached", "(raise the limit (ulimit -f), or choose another"),
])
def test_each_write_fault_is_one_line_that_says_what_to_do(code: int, why: str, advice: str) -> None:
    error = unwritable("/data/cache", OSError(code, os.strerror(code)), "experiment.cache_dir")
    assert isinstance(error, FolderUnusable)
    assert str(error).startswith(f"cannot write to /data/cache: {why} {advice}")
    assert code == errno.ENOSPC or code == errno.EDQUOT or "free" not in str(error)


def test_other_os_errors_are_not_taken_for_write_faults() -> None:
    assert unwritable("/x", OSError(errno.EIO, "I/O error"), "experiment.cache_dir") is None
    assert unwritable("/x", FileNotFoundError(errno.ENOENT, "gone"), "experiment.cache_dir") is None


# --- a read-only cache or output folder: refused before anything runs ---------------------------------------


@pytest.mark.parametrize("key", ["cache_dir", "output_dir"])
def test_a_read_only_folder_is_one_line_before_anything_runs(key: str, tmp_path: Path, tmpfs) -> None:
    """Issue 19: a read-only experiment.cache_dir ended in a traceback from the index build lock; a
    read-only output folder was told to "free the space"."""
    read_only = tmpfs("ro", "ro")
    folders = {"cache_dir": tmp_path / "cache", "output_dir": tmp_path / "out", key: read_only / "sub"}
    args = [f"experiment.cache_dir={folders['cache_dir']}", f"experiment.output_dir={folders['output_dir']}"]
    line = _one_error(_slm_ray("run", *TINY, "dataset.limit=2", *args, cwd=tmp_path))
    assert f"experiment.{key}=" in line and "the file system is read-only" in line, line
    assert f"(choose another experiment.{key})" in line and "free" not in line
    assert not (tmp_path / "out").exists()


def test_a_sweep_with_a_read_only_cache_is_one_line_before_ray(tmp_path: Path, tmpfs) -> None:
    read_only = tmpfs("ro", "ro")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: ro\noverrides: [dataset.limit=2, tracker=none, 'experiment.cache_dir={read_only}']\n"
                     "grid: {model: [tiny_llama, tiny_qwen3]}\n")
    line = _one_error(_slm_ray("sweep", str(sweep), cwd=tmp_path, timeout=120))
    assert "experiment.cache_dir=" in line and "read-only" in line
    assert not (tmp_path / "outputs").exists()


# --- faults the first write finds: one line, answers kept, nothing half-built left ---------------------------


def _partial_run(tmp_path: Path, cache: Path, extra: list[str]) -> tuple[list[str], Path]:
    """A run of 6 questions finished, then its last 3 answers deleted (as a crash would leave it):
    the same command must load the model, and maybe build an index, again."""
    args = [*TINY, "dataset.limit=6", "experiment.output_dir=out", "experiment.name=partial", *extra]
    done = _slm_ray("run", *args, f"experiment.cache_dir={cache}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "partial"
    lines = (folder / PREDICTIONS).read_text().splitlines(keepends=True)
    (folder / PREDICTIONS).write_text("".join(lines[:3]))
    (folder / RESULTS).unlink()
    return args, folder


def test_a_read_only_index_folder_is_one_line_and_the_answers_are_kept(tmp_path: Path, shared_cache: Path,
                                                                      tmpfs) -> None:
    """The cache root is writable (so nothing refuses it up front) but its indexes/ is read-only:
    the BM25 build lock cannot be taken."""
    cache = tmp_path / "cache"
    args, folder = _partial_run(tmp_path, cache, ["experiment_mode=retriever_context", "retriever.k=2"])
    kept = (folder / PREDICTIONS).read_bytes()
    shutil.rmtree(cache / "indexes")
    tmpfs("cache/indexes", "ro")
    line = _one_error(_slm_ray("run", *args, f"experiment.cache_dir={cache}", cwd=tmp_path))
    assert f"cannot write to {cache / 'indexes'}/bm25-" in line
    assert line.endswith("the file system is read-only (choose another experiment.cache_dir)")
    assert (folder / PREDICTIONS).read_bytes() == kept and len(read_predictions(folder / PREDICTIONS)) == 3


def test_a_full_cache_disk_is_one_line_and_leaves_no_staging_folder(tmp_path: Path, tmpfs) -> None:
    """Issue 19: a full disk under the cache was a traceback. 64 KiB holds neither the tiny
    tokenizer nor a BM25 index: whichever is built first fills it."""
    cache = tmp_path / "cache"
    args, folder = _partial_run(tmp_path, cache, ["experiment_mode=retriever_context", "retriever.k=2"])
    kept = (folder / PREDICTIONS).read_bytes()
    shutil.rmtree(cache)
    full = tmpfs("cache", "size=64k")
    line = _one_error(_slm_ray("run", *args, f"experiment.cache_dir={full}", cwd=tmp_path))
    assert f"cannot write to {full}/" in line
    assert line.endswith("the disk is full (free space there, or choose another experiment.cache_dir)")
    assert _leftovers(full) == []
    assert [p.name for p in full.glob("*/*") if not p.name.startswith(".")] == []  # no half-built entry
    assert (folder / PREDICTIONS).read_bytes() == kept


def test_a_cache_build_that_fails_outside_python_on_a_full_disk_is_the_same_line(tmp_path: Path, tmpfs) -> None:
    """faiss and safetensors report a full disk with their own exceptions, not OSError."""
    from slm_ray.store.cache_entry import load_or_build

    full = tmpfs("cache", "size=64k")

    def build(staging: Path) -> None:
        try:
            (staging / "index.faiss").write_bytes(b"\0" * 200_000)
        except OSError:
            pass
        raise RuntimeError("Error in faiss::FileIOWriter: fwrite failed")

    with pytest.raises(FolderUnusable, match="the disk is full"):
        load_or_build(full / "indexes" / "dense-x", build)
    assert _leftovers(full) == []
    with pytest.raises(RuntimeError, match="a bug"):  # on a disk with room, the error is what it was
        load_or_build(tmp_path / "roomy" / "dense-y", lambda staging: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_an_output_disk_that_fills_mid_run_is_one_line_and_keeps_every_whole_answer(tmp_path: Path,
                                                                                     shared_cache: Path,
                                                                                     tmpfs) -> None:
    full = tmpfs("out", "size=32k")
    done = _slm_ray("run", *TINY, "dataset.limit=200", "model.batch_size=8", f"experiment.cache_dir={shared_cache}",
                    f"experiment.output_dir={full}", "experiment.name=fills", cwd=tmp_path)
    line = _one_error(done)
    assert line.startswith(f"error: cannot write to {full / 'fills'}: the disk is full (free space there, or "
                           "choose another experiment.output_dir)"), line
    assert "Logging error" not in done.stderr  # run.log stops quietly; the answers' write says it once
    kept = read_predictions(full / "fills" / PREDICTIONS)
    assert 0 < len(kept) < 200 and len({r["id"] for r in kept}) == len(kept)


def test_report_into_a_full_sweep_folder_is_one_line(tmp_path: Path, tmpfs) -> None:
    from slm_ray.store.io import atomic_write_json

    sweep = tmpfs("sweep", "size=16k")
    (sweep / "trials").mkdir()
    atomic_write_json(sweep / "sweep.json", {"name": "s", "trials": []})
    (sweep / "filler").write_bytes(b"\0" * 12_000)
    line = _one_error(_slm_ray("report", str(sweep), cwd=tmp_path))
    assert line.startswith(f"error: cannot write to {sweep}: the disk is full"), line
    assert "experiment.output_dir" in line


@pytest.mark.ray
def test_a_sweep_whose_output_disk_fills_mid_run_ends_with_one_line(tmp_path: Path, shared_cache: Path,
                                                                    tmpfs) -> None:
    """The trial's write fails on the full disk: Tune stops the sweep (every trial would fail the same
    way), the driver ends with the trial's one line, exit 2, and every whole answer is kept."""
    full = tmpfs("out", "size=512k")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: fills\noverrides: [dataset.limit=2000, model.batch_size=8, tracker=none, "
                     f"'experiment.cache_dir={shared_cache}', 'experiment.output_dir={full}', "
                     "experiment.bootstrap_resamples=20]\ngrid: {model: [tiny_llama]}\n")
    done = _slm_ray("sweep", str(sweep), cwd=tmp_path, timeout=600)
    line = _one_error(done)
    assert line.startswith(f"error: cannot write to {full}") and "the disk is full" in line, line
    kept = read_predictions(full / "sweeps" / "fills" / "trials" / "tiny_llama-nq-no_context" / PREDICTIONS)
    assert 0 < len(kept) < 2000 and len({r["id"] for r in kept}) == len(kept)
