"""Scale benchmark: a synthetic Wikipedia-sized corpus through the project's own path (issue 18).

Run from the repository root::

    .venv/bin/python bench/bench_scale.py                     # 1,000,000 passages (~700 MB of TSV)
    .venv/bin/python bench/bench_scale.py --passages 50000    # a quick run to try it out

It writes ``--passages`` synthetic passages of 100 words as a psgs_w100-style TSV (header
``id\\ttext\\ttitle``), the words drawn from a Zipf-distributed vocabulary with a fixed seed, into a
work folder (a temporary one unless ``--work-dir``), then measures, each step in a child process of
its own so its peak RSS (``ru_maxrss``) is that step's alone:

store
    ``load_corpus`` streaming the TSV into the memory-mapped passage store (time, peak RSS);
bm25
    ``ensure_index``: the sharded BM25 build (time, peak RSS), and the index's bytes on disk;
bm25_tasks
    the same index built again with its shards as parallel Ray tasks (one per CPU), as ``slm-ray
    index`` and a sweep's prepare stage do: the time, and the speedup over the bm25 step;
actor
    what a retriever actor does: open the store and ``build_or_load`` the cached index (shards
    memory-mapped), then the process's RSS against the index size (goal: at most 25%), also without
    the libraries' own memory (numpy, pyarrow, bm25s, measured before the load), and ``retrieve`` of
    ``--queries`` queries (3-5 words of the vocabulary) in batches of 256, top-10: queries/s and the
    RSS after them, split into anonymous memory and the mapped files' resident pages (page cache);
    then the same queries over the same shards as bm25s loads and scores them itself, as the
    baseline of the queries/s ratio (the answers must be equal);
sweep
    a real ``slm-ray sweep`` of two retriever_context trials (tiny model, 20 questions) over the
    corpus and the index the bm25 step built: the driver's peak RSS (polled; goal: under 2 GB) and
    the retriever actor's memory from ``sweep_stats.json``.

``--steps actor,sweep`` reruns some steps over an existing ``--work-dir``, keeping the other figures.

Results go to ``bench/results/scale.json`` (``passages``, ``store_build_s``, ``bm25_build_s``,
``bm25_peak_rss_mb``, ``index_bytes``, ``actor_rss_mb``, ``queries_per_s``...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS_PER_PASSAGE = 100
VOCABULARY = 200_000
ZIPF_EXPONENT = 1.07  # English word frequencies are close to 1/rank
SEED = 18
BATCH = 256
K = 10


def _vocabulary(rng) -> list[str]:
    """``VOCABULARY`` distinct lowercase made-up words of 3-10 letters (no stopword among them)."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        for length, chars in zip(rng.integers(3, 11, 50_000), rng.choice(letters, (50_000, 10))):
            words.setdefault("q" + "".join(chars[:length]), None)  # a leading q: no English stopword
    return list(words)[:VOCABULARY]


def _zipf_probabilities():
    import numpy as np

    weights = 1.0 / np.arange(1, VOCABULARY + 1) ** ZIPF_EXPONENT
    return weights / weights.sum()


def write_corpus(path: Path, n: int) -> float:
    """The synthetic TSV, written in chunks of 20,000 passages; returns seconds taken."""
    import numpy as np

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    words = np.array(_vocabulary(rng), dtype=object)
    p = _zipf_probabilities()
    with open(path, "w", encoding="utf-8") as out:
        out.write("id\ttext\ttitle\n")
        for start in range(0, n, 20_000):
            count = min(20_000, n - start)
            drawn = words[rng.choice(VOCABULARY, size=(count, WORDS_PER_PASSAGE), p=p)]
            titles = words[rng.integers(1000, VOCABULARY, size=(count, 2))]
            out.writelines(f"{start + i}\t{' '.join(row)}\t{' '.join(title).title()}\n"
                           for i, (row, title) in enumerate(zip(drawn, titles)))
    return time.perf_counter() - started


def queries(n: int) -> list[str]:
    """``n`` queries of 3-5 words, drawn from ranks 100-20,000: neither stopword-like nor unseen."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    words = _vocabulary(rng)
    pick = np.random.default_rng(SEED + 1)
    return [" ".join(words[int(r)] for r in pick.integers(100, 20_000, size=int(pick.integers(3, 6))))
            for _ in range(n)]


# --- the steps, each run in a child process ---------------------------------------------------------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _rss_split_mb() -> dict[str, float]:
    """Resident anonymous memory (what the process itself holds) and resident file pages (the
    memory-mapped index and store: page cache, shared and reclaimable), from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile")}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _corpus(work: Path):
    from slm_ray.config import CorpusConfig
    from slm_ray.data.corpus import load_corpus

    return load_corpus(CorpusConfig(name="scale", path=str(work / "psgs.tsv")), work / "cache")


def step_store(work: Path, shard_size: int, n_queries: int) -> dict:
    started = time.perf_counter()
    store = _corpus(work)
    return {"store_build_s": round(time.perf_counter() - started, 2), "store_peak_rss_mb": round(_peak_rss_mb()),
            "store_bytes": _bytes(store.folder), "passages_stored": len(store)}


def step_bm25(work: Path, shard_size: int, n_queries: int) -> dict:
    from slm_ray.config import BM25Config
    from slm_ray.retrieval.base import ensure_index, index_key

    store = _corpus(work)
    config = BM25Config(shard_size=shard_size)
    folder = work / "cache" / "indexes" / index_key(config, store)
    shutil.rmtree(folder, ignore_errors=True)  # a rerun measures a build, not a cache hit
    started = time.perf_counter()
    ensure_index(config, store, work / "cache")
    built_s = time.perf_counter() - started
    return {"bm25_build_s": round(built_s, 2), "bm25_peak_rss_mb": round(_peak_rss_mb()),
            "index_bytes": _bytes(folder), "shards": len(list((folder / "shards").iterdir()))
            if (folder / "shards").exists() else 1}


def step_bm25_tasks(work: Path, shard_size: int, n_queries: int) -> dict:
    """The same index built again in another cache with its shards as parallel Ray tasks (one per
    CPU of a local Ray), as ``slm-ray index`` and a sweep's prepare stage build it; the speedup is
    against the bm25 step's one-process build of the same shards."""
    import ray

    from slm_ray.config import BM25Config
    from slm_ray.retrieval.base import ensure_index
    from slm_ray.retrieval.ray_shards import build_shards_with_ray

    store = _corpus(work)
    config = BM25Config(shard_size=shard_size)
    cache = work / "cache-tasks"
    shutil.rmtree(cache, ignore_errors=True)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        started = time.perf_counter()
        shards = build_shards_with_ray(config, store, cache, echo=lambda text: None)
        ensure_index(config, store, cache)  # links the shards into the index
        built_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    shutil.rmtree(cache, ignore_errors=True)
    return {"bm25_tasks_build_s": round(built_s, 2), "bm25_tasks_shards": shards, "bm25_tasks_cpus": os.cpu_count()}


def step_actor(work: Path, shard_size: int, n_queries: int) -> dict:
    import bm25s  # noqa: F401  the libraries first: their memory is the same for any index
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401
    import Stemmer  # noqa: F401

    from slm_ray.config import BM25Config
    from slm_ray.retrieval.base import build_or_load

    libraries = _rss_mb()
    started = time.perf_counter()
    store = _corpus(work)
    retriever, built = build_or_load(BM25Config(shard_size=shard_size), store, work / "cache")
    load_s = time.perf_counter() - started
    assert not built, "the index should have been built by the bm25 step"
    loaded, loaded_split = _rss_mb(), _rss_split_mb()
    asked = queries(n_queries)
    retriever.retrieve(asked[:8], K)  # warm-up: tokenizer and stemmer
    started = time.perf_counter()
    hits = [retriever.retrieve(asked[i:i + BATCH], K) for i in range(0, len(asked), BATCH)]
    seconds = time.perf_counter() - started
    assert sum(len(h) for h in hits) == len(asked)
    after_split = _rss_split_mb()
    from slm_ray.retrieval.base import index_key

    baseline_qps = _bm25s_baseline(retriever, work / "cache" / "indexes" / index_key(retriever.config, store), asked, hits)
    return {"actor_load_s": round(load_s, 2), "libraries_rss_mb": round(libraries), "actor_rss_mb": round(loaded),
            "actor_rss_anon_mb": round(loaded_split["RssAnon"]), "actor_rss_file_mb": round(loaded_split["RssFile"]),
            "actor_rss_after_queries_mb": round(_rss_mb()),
            "actor_rss_anon_after_queries_mb": round(after_split["RssAnon"]),
            "actor_rss_file_after_queries_mb": round(after_split["RssFile"]), "queries": len(asked),
            "queries_per_s": round(len(asked) / seconds, 1), "k": K,
            "bm25s_own_queries_per_s": round(baseline_qps, 1),
            "queries_per_s_over_bm25s_own": round(len(asked) / seconds / baseline_qps, 2)}


def _bm25s_baseline(retriever, folder: Path, asked: list[str], hits: list) -> float:
    """Queries/s of the same shards loaded and scored by bm25s itself (``BM25.load(mmap=True)``,
    its dict vocabulary and ``np.add.at`` scoring), in this process; its answers must equal ours."""
    import copy

    from slm_ray.retrieval.bm25_shard import bm25s_module

    paths = sorted((folder / "shards").iterdir()) if (folder / "shards").exists() else [folder]
    plain = copy.copy(retriever)
    plain._shards = [(start, bm25s_module().BM25.load(str(path), mmap=True))
                     for (start, _), path in zip(retriever._shards, paths)]
    started = time.perf_counter()
    again = [plain.retrieve(asked[i:i + BATCH], K) for i in range(0, len(asked), BATCH)]
    seconds = time.perf_counter() - started
    assert again == hits, "bm25s' own scoring answered differently"
    return len(asked) / seconds


def step_sweep(work: Path, shard_size: int, n_queries: int) -> dict:
    """A real `slm-ray sweep` in retriever_context over the corpus (tiny model, 20 questions, the
    index the bm25 step built): the driver's peak RSS, polled, and the retriever actor's peak."""
    import psutil

    sweep = work / "scale_sweep.yaml"
    sweep.write_text(
        "name: scale\noverrides:\n  - model=tiny_llama\n  - tracker=none\n  - dataset.limit=20\n"
        "  - experiment_mode=retriever_context\n  - retriever=bm25\n  - corpus=file\n"
        f"  - corpus.path={work / 'psgs.tsv'}\n  - corpus.name=scale\n  - retriever.shard_size={shard_size}\n"
        f"  - experiment.cache_dir={work / 'cache'}\n  - experiment.output_dir={work / 'outputs'}\n"
        "grid:\n  retriever.k: [3, 5]\n")
    shutil.rmtree(work / "outputs" / "sweeps" / "scale", ignore_errors=True)  # a rerun runs the trials again
    started = time.perf_counter()
    driver = subprocess.Popen([sys.executable, "-m", "slm_ray", "sweep", str(sweep), "--no-dashboard"], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak = psutil.Process(driver.pid), 0
    while driver.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.1)
    output = driver.communicate()[0]
    if driver.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {driver.returncode}):\n{output[-3000:]}")
    stats = json.loads((work / "outputs" / "sweeps" / "scale" / "sweep_stats.json").read_text())["last_run"]
    actor = (stats.get("retriever_actors") or [{}])[0].get("memory") or {}
    return {"sweep_s": round(time.perf_counter() - started, 1), "sweep_driver_peak_rss_mb": round(peak / 2**20),
            "sweep_trials_ok": stats["trials_outcome"]["ok"],
            "sweep_retriever_actor_peak_rss_mb": round(actor.get("peak_rss_mb") or 0)}


STEPS = {"store": step_store, "bm25": step_bm25, "bm25_tasks": step_bm25_tasks, "actor": step_actor,
         "sweep": step_sweep}


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_step(name: str, work: Path, shard_size: int, n_queries: int) -> dict:
    """Run one step in a fresh interpreter; its last stdout line is the step's JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--step", name, "--work-dir", str(work),
                           "--shard-size", str(shard_size), "--queries", str(n_queries)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    return f"{model}, {os.cpu_count()} cores{', AVX2' if ' avx2' in flags else ''}{', AVX-512' if 'avx512f' in flags else ''}"


def main() -> None:
    from slm_ray.config import BM25Config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=BM25Config().shard_size)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--work-dir", type=Path, help="keep the corpus, store and index here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="the steps to run (default all; a subset updates --out's earlier figures)")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)  # a child's step
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args.work_dir, args.shard_size, args.queries)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "psgs.tsv"
        written_s = write_corpus(corpus, args.passages) if not corpus.exists() else None
        result: dict = {"benchmark": "scale", "command": "python bench/" + " ".join([Path(__file__).name, *sys.argv[1:]]),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "machine": {"cpu": _cpu(), "python": platform.python_version(),
                                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                        "versions": {name: version(name) for name in ("bm25s", "pyarrow", "numpy", "PyStemmer")},
                        "passages": args.passages, "words_per_passage": WORDS_PER_PASSAGE, "vocabulary": VOCABULARY,
                        "zipf_exponent": ZIPF_EXPONENT, "shard_size": args.shard_size,
                        "corpus_bytes": corpus.stat().st_size, "corpus_write_s": round(written_s, 2) if written_s else None}
        steps = [name for name in args.steps.split(",") if name]
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise SystemExit(f"--steps: unknown step {unknown[0]!r} (valid: {', '.join(STEPS)})")
        if len(steps) < len(STEPS) and args.out.exists():  # a rerun of some steps keeps the others' figures
            earlier = json.loads(args.out.read_text())
            rerun = {"steps": steps, "command": result["command"], "date": result["date"]}
            result = {**earlier, "reruns": [*earlier.get("reruns", []), rerun]}
        for name in steps:
            result.update(run_step(name, work, args.shard_size, args.queries))
            print(f"{name}: done", flush=True)
        if "bm25_tasks_build_s" in result:
            result["bm25_tasks_speedup"] = round(result["bm25_build_s"] / result["bm25_tasks_build_s"], 2)
        if "actor_rss_mb" in result and "index_bytes" in result:
            result["actor_rss_over_index"] = round(result["actor_rss_mb"] * 2**20 / result["index_bytes"], 3)
            result["actor_rss_over_index_without_libraries"] = round(
                (result["actor_rss_mb"] - result["libraries_rss_mb"]) * 2**20 / result["index_bytes"], 3)
            result["actor_anon_after_queries_over_index"] = round(
                result["actor_rss_anon_after_queries_mb"] * 2**20 / result["index_bytes"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
