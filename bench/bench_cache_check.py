"""Cache check benchmark: what verifying a cache entry against its manifest adds to a cached load.

Run from the repository root::

    .venv/bin/python bench/bench_cache_check.py                          # BM25, dense flat, SmolLM2-135M
    .venv/bin/python bench/bench_cache_check.py --cache-dir /tmp/cc      # keep the built entries for reruns
    .venv/bin/python bench/bench_cache_check.py --skip-dense --skip-model

A cold cache first builds what it lacks: the dense index over the built-in corpus takes several
minutes on 2 CPU cores and the SmolLM2 dequantisation about 20 s; with ``--cache-dir`` they are
kept, and reruns only load.

What it measures, in one process, for three cache entries:

- ``bm25``: ``build_or_load`` of the default BM25 index over the built-in corpus (3,600 passages);
- ``dense_flat``: ``build_or_load`` of all-MiniLM-L6-v2 + FAISS Flat over the same corpus (the
  encoder loads lazily at the first query, so it is not part of either load);
- ``model``: ``load_tokenizer_and_model`` of ``smollm2_135m_gguf`` (the dequantised float32
  safetensors copy, ~540 MB, tokenizer included).

Two kinds of cached load, each with the check swapped for a no-op (``unchecked``; everything else
is the same code) and as shipped:

- *reload in this process*: after one warm-up load of each kind (files in the page cache, lazy
  imports done), ``--rounds`` rounds alternate an unchecked and a checked load; ``verify_manifest``
  is also timed on its own. This is the strictest baseline: the dense index and the model then load
  at memory speed (faiss copies 5.5 MB; safetensors maps the weights without reading them).
- *first load in a new process* (``--fresh-rounds`` child processes per entry, each started by this
  one): torch/transformers/faiss/bm25s are imported first, then the first unchecked load is timed
  (what a run or a sweep worker pays: each loads an entry once), then ``verify_manifest`` alone.

Reported: medians, and the check's cost over the unchecked load (target < 0.10). It also times
candidate checksums over each entry's files (best of 3): CRC-32 is what ships; the others were the
alternatives considered (a plain sum of uint64 words is fastest but blind to reordered bytes).
Timings are wall clock; on a shared machine trust the medians and the ratios more than single rounds.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import mmap
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator

from slm_ray.store import cache_entry
from slm_ray.store.cache_manifest import file_crc32, verify_manifest

ROOT = Path(__file__).resolve().parent
TARGET = 0.10
ENTRIES = ("bm25", "dense_flat", "model")
#: Imported before a new process's first load: module imports are not part of a cached load.
HEAVY_IMPORTS = {"bm25": ("bm25s", "Stemmer"), "dense_flat": ("faiss", "sentence_transformers"),
                 "model": ("torch", "transformers")}


@contextmanager
def unchecked() -> Iterator[None]:
    """Loads inside skip the manifest check: the same code path otherwise."""
    real = cache_entry.verify_manifest
    cache_entry.verify_manifest = lambda folder: None
    try:
        yield
    finally:
        cache_entry.verify_manifest = real


def entry(name: str, cache: Path) -> tuple[Callable[[], Any], Callable[[], Path]]:
    """(load the entry from ``cache``, building it on a cold cache; its folder)."""
    if name == "model":
        from slm_ray.composition import compose_config
        from slm_ray.generation.sources import load_tokenizer_and_model

        cfg = compose_config(["model=smollm2_135m_gguf", f"experiment.cache_dir={cache}", "tracker=none"]).model
        stem = Path(cfg.gguf_file).stem
        return (lambda: load_tokenizer_and_model(cfg, cache),
                lambda: next(p for p in (cache / "models").iterdir() if p.name.startswith(stem)))
    from slm_ray.config import BM25Config, DenseConfig
    from slm_ray.data.corpus import builtin_nq_corpus
    from slm_ray.retrieval.base import build_or_load, index_key

    cfg = BM25Config() if name == "bm25" else DenseConfig(index_type="flat")
    passages = builtin_nq_corpus()
    return (lambda: build_or_load(cfg, passages, cache)[0],
            lambda: cache / "indexes" / index_key(cfg, passages))


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    del result
    gc.collect()
    return elapsed


def folder_facts(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {"folder": folder.name, "n_files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 1e6, 2)}


def reloads(load: Callable[[], Any], folder: Path, rounds: int) -> dict:
    """Alternate unchecked and checked reloads in this process; time the check on its own too."""
    with unchecked():
        timed(load)  # warm-up: files into the page cache, lazy imports done
    timed(load)
    plain, checked, check_only, repeat_check = [], [], [], []
    for i in range(rounds):
        for kind in (("plain", "checked") if i % 2 == 0 else ("checked", "plain")):
            if kind == "plain":
                with unchecked():
                    plain.append(timed(load))
            else:
                checked.append(timed(load))
        check_only.append(timed(lambda: verify_manifest(folder)))
        repeat_check.append(timed(lambda: cache_entry._verified(folder)))  # verified before: signature only
    med_plain, med_checked, med_check, med_repeat = (statistics.median(x) for x in
                                                     (plain, checked, check_only, repeat_check))
    return {
        "repeat_check_s": round(med_repeat, 6), "repeat_check_over_load": round(med_repeat / med_plain, 4),
        "rounds": rounds, "load_unchecked_s": round(med_plain, 5), "load_checked_s": round(med_checked, 5),
        "check_only_s": round(med_check, 5), "check_over_load": round(med_check / med_plain, 4),
        "checked_over_unchecked_minus_1": round(med_checked / med_plain - 1, 4),
        "meets_target": med_check / med_plain < TARGET,
        "all_rounds_s": {"unchecked": [round(x, 5) for x in plain], "checked": [round(x, 5) for x in checked],
                         "check_only": [round(x, 5) for x in check_only]},
    }


def child(name: str, cache: Path) -> None:
    """In a new process: imports, then the first (unchecked) load, then the check alone; prints JSON."""
    import importlib

    for module in HEAVY_IMPORTS[name]:
        importlib.import_module(module)
    load, folder = entry(name, cache)
    with unchecked():
        load_s = timed(load)
    path = folder()  # outside the timing: an index's folder name hashes the whole corpus
    check_s = timed(lambda: verify_manifest(path))
    print(json.dumps({"load_s": load_s, "check_s": check_s}))


def first_loads(name: str, cache: Path, rounds: int) -> dict:
    """The first load in ``rounds`` new processes, against the check in the same process."""
    runs = []
    for _ in range(rounds):
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--cache-dir", str(cache)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    load_s = statistics.median(r["load_s"] for r in runs)
    check_s = statistics.median(r["check_s"] for r in runs)
    return {"rounds": rounds, "load_unchecked_s": round(load_s, 4), "check_only_s": round(check_s, 5),
            "check_over_load": round(check_s / load_s, 4), "meets_target": check_s / load_s < TARGET,
            "all_rounds_s": [{k: round(v, 5) for k, v in r.items()} for r in runs]}


def _mapped(path: Path) -> Any:
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if handle.seek(0, 2) else b""


def _sum_u64(path: Path) -> int:
    import numpy as np

    data = _mapped(path)
    return int(np.frombuffer(data, dtype=np.uint64, count=len(data) // 8).sum())


def _adler32(path: Path) -> int:
    data, value = memoryview(_mapped(path)), 1
    for start in range(0, len(data), 8 << 20):
        value = zlib.adler32(data[start:start + (8 << 20)], value)
    return value


def _digest(algorithm: str) -> Callable[[Path], Any]:
    def run(path: Path) -> str:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, algorithm).hexdigest()
    return run


CANDIDATES = {"crc32 (shipped)": file_crc32, "adler32": _adler32, "sha1": _digest("sha1"),
              "sha256": _digest("sha256"), "blake2b": _digest("blake2b"),
              "uint64 sum (order-blind)": _sum_u64}


def candidates(folder: Path) -> dict:
    """Seconds for each candidate checksum over every file of ``folder`` (best of 3, warm cache)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    out = {}
    for name, fn in CANDIDATES.items():
        if name.startswith("sha") or name == "blake2b":
            if not hasattr(hashlib, "file_digest"):  # Python < 3.11
                continue
        out[name] = round(min(timed(lambda: [fn(p) for p in files]) for _ in range(3)), 5)
    return out


def measure(name: str, cache: Path, rounds: int, fresh_rounds: int) -> dict:
    load, folder_of = entry(name, cache)
    started = time.perf_counter()
    load()  # builds the entry on a cold cache
    first_call_s = time.perf_counter() - started
    folder = folder_of()
    assert verify_manifest(folder) is None, f"{folder} does not match its manifest"
    row = {"entry": name, **folder_facts(folder), "first_call_s": round(first_call_s, 3),
           "reload_in_process": reloads(load, folder, rounds)}
    if fresh_rounds:
        row["first_load_new_process"] = first_loads(name, cache, fresh_rounds)
    row["candidate_checksums_s"] = candidates(folder)
    return row


def versions() -> dict:
    found = {}
    for package in ("bm25s", "faiss-cpu", "safetensors", "transformers", "torch", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def print_table(rows: list[dict]) -> None:
    print(f"\n{'entry':<12}{'files':>6}{'MB':>9}  {'baseline':<22}{'load s':>9}{'checked s':>11}{'check s':>10}"
          f"{'check/load':>12}")
    for r in rows:
        for label, key in (("reload in process", "reload_in_process"), ("first load, new proc.", "first_load_new_process")):
            m = r.get(key)
            if m is None:
                continue
            checked = f"{m['load_checked_s']:>11.4f}" if "load_checked_s" in m else f"{'':>11}"
            print(f"{r['entry']:<12}{r['n_files']:>6}{r['mb']:>9.2f}  {label:<22}{m['load_unchecked_s']:>9.4f}{checked}"
                  f"{m['check_only_s']:>10.4f}{m['check_over_load']:>12.1%}")
    print(f"target: check / load < {TARGET:.0%}")
    for r in rows:
        m = r.get("reload_in_process")
        if m and "repeat_check_s" in m:
            print(f"{r['entry']}: a reload in a process that verified it already re-checks size, mtime and inode "
                  f"only: {m['repeat_check_s'] * 1e3:.2f} ms = {m['repeat_check_over_load']:.1%} of the reload")
    names = list(CANDIDATES)
    print("\ncandidate checksums over each entry's files, ms (best of 3) and share of the in-process reload")
    print(f"{'entry':<12}" + "".join(f"{n:>26}" for n in names))
    for r in rows:
        reload_s = r["reload_in_process"]["load_unchecked_s"]
        cells = [f"{r['candidate_checksums_s'][n] * 1e3:.1f} ({r['candidate_checksums_s'][n] / reload_s:.0%})"
                 if n in r["candidate_checksums_s"] else "n/a" for n in names]
        print(f"{r['entry']:<12}" + "".join(f"{c:>26}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache to build in and load from (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=15, help="in-process rounds for the indexes (the model gets a third, at least 3)")
    parser.add_argument("--fresh-rounds", type=int, default=3, help="new processes per entry (0: none)")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--child", choices=ENTRIES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cache_check.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args.child, args.cache_dir)
        return 0

    names = [n for n in ENTRIES if not (n == "dense_flat" and args.skip_dense) and not (n == "model" and args.skip_model)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp)
        rows = [measure(n, cache, args.rounds if n != "model" else max(3, args.rounds // 3), args.fresh_rounds)
                for n in names]
    res = {
        "benchmark": "cache_check",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(),
        "target_check_over_load": TARGET,
        "entries": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print_table(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
