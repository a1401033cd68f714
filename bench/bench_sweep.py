"""The sweep engine against a plain loop: same trials, same machine, wall time and what was loaded.

    python bench/bench_sweep.py                                # tiny models, 3 modes, BM25, 500 questions each
    python bench/bench_sweep.py --cpus 2 --threads 2           # like for like: one 2-CPU worker vs 2 threads
    python bench/bench_sweep.py --limit 50 --models smollm2_135m_gguf,tiny_llama --retrievers bm25,dense

1. Warm-up (not timed): tokenizer, dequantised model files and indexes are cached under
   <workdir>/cache, so both runs start from the same disk state.
2. Sequential: a fresh Python process runs run_experiment for every trial in the sweep's order, one
   generator kept per model and one retriever per retriever config (the best a loop can do).
3. Engine: a fresh process runs ``python -m slm_ray.sweep`` on the same sweep file: it starts a local
   Ray, runs the trials through Tune on generator workers, writes the summary, stops Ray.

Both are timed from process start to exit (interpreter start and imports included on both sides).
``--repeats`` alternates which side goes first. Prints both wall times, the ratio engine /
sequential (target: <= 1.15 on one machine), the extra seconds, the ratio of the time spent inside
the generators (how much the engine's own processes slow the trials), Ray's start-up, and the index
builds and model loads of each. ``--threads`` sets torch's threads in the sequential process; Ray
gives every worker as many threads as its CPUs (``--cpus``, 1 by default, so 2 workers on 2 cores).
``--json FILE`` records the numbers in FILE under ``--label``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sweep_file(folder: Path, args: argparse.Namespace, cache: Path) -> Path:
    models = [m for m in args.models.split(",") if m]
    retrievers = [r for r in args.retrievers.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    path = folder / "bench.yaml"
    path.write_text(
        "name: bench\n"
        f"overrides: [dataset=nq, dataset.limit={args.limit}, tracker=none, 'experiment.cache_dir={cache}',"
        f" retriever.k={args.k}, experiment.bootstrap_resamples=200]\n"
        "grid:\n"
        f"  model: [{', '.join(models)}]\n"
        f"  experiment_mode: [{', '.join(modes)}]\n"
        f"  retriever: [{', '.join(retrievers)}]\n"
        f"resources: {{cpus: {args.cpus}, gpus: 0}}\n"
        + (f"max_concurrent_trials: {args.concurrency}\n" if args.concurrency else "")
    )
    return path


def warm_up(plan) -> None:
    """Fill the disk caches both runs use: tokenizers/dequantised models, indexes."""
    from slm_ray.data.corpus import load_corpus
    from slm_ray.experiment import build_generator
    from slm_ray.retrieval.base import build_or_load

    seen_models, seen_retrievers = set(), set()
    for trial in plan.trials:
        if trial.model_key not in seen_models:
            seen_models.add(trial.model_key)
            build_generator(trial.config).close()
        if trial.uses_retriever and trial.retriever_key not in seen_retrievers:
            seen_retrievers.add(trial.retriever_key)
            cfg = trial.config
            build_or_load(cfg.retriever, load_corpus(cfg.corpus, cfg.experiment.cache_dir), cfg.experiment.cache_dir)


def sequential_child(sweep_file: Path, output_dir: Path, threads: int, report: Path) -> int:
    """The timed loop (runs in its own process): run_experiment per trial, models and retrievers reused."""
    started = time.perf_counter()
    import torch

    if threads:
        torch.set_num_threads(threads)
    from slm_ray.config import validate_config
    from slm_ray.data.corpus import load_corpus
    from slm_ray.experiment import build_generator, run_experiment
    from slm_ray.retrieval.base import build_or_load
    from slm_ray.sweeps.spec import load_sweep

    plan = load_sweep(sweep_file)
    loop_started = time.perf_counter()
    generators, retrievers = {}, {}
    builds = 0
    for trial in plan.trials:
        data = trial.config.model_dump(by_alias=True)
        data["experiment"]["output_dir"] = str(output_dir)
        cfg = validate_config(data)
        if trial.model_key not in generators:
            for other in generators.values():  # one model in memory at a time, as a worker holds one
                other.close()
            generators.clear()
            generators[trial.model_key] = build_generator(cfg)
        retriever = None
        if trial.uses_retriever:
            if trial.retriever_key not in retrievers:
                retrievers[trial.retriever_key], built = build_or_load(
                    cfg.retriever, load_corpus(cfg.corpus, cfg.experiment.cache_dir), cfg.experiment.cache_dir)
                builds += int(built)
            retriever = retrievers[trial.retriever_key]
        run_experiment(cfg, generator=generators[trial.model_key], retriever=retriever, show_progress=False)
    done = time.perf_counter()
    report.write_text(json.dumps({
        "loop_seconds": round(done - loop_started, 2), "setup_seconds": round(loop_started - started, 2),
        "threads": torch.get_num_threads(), "model_loads": {t.config.model.name: 1 for t in plan.trials},
        "indexes_built": builds, "indexes_loaded": len(retrievers) - builds}))
    return 0


def _timed(command: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{command[:4]} failed with exit code {code}; see {log}")
    return seconds


def _generation_seconds(trials_dir: Path) -> float:
    """Time spent inside the generator, summed over the trials' results.json."""
    return sum(json.loads(p.read_text())["throughput"]["generation_seconds"] for p in trials_dir.glob("*/results.json"))


def run_sequential(args: argparse.Namespace, sweep_file: Path, workdir: Path, env: dict[str, str], n: int) -> dict:
    out = workdir / f"sequential{n}"
    report = workdir / f"sequential{n}.json"
    seconds = _timed([sys.executable, __file__, "--threads", str(args.threads), "--sequential-child",
                      str(sweep_file), str(report)], env, workdir / f"sequential{n}.log")
    shutil.move(str(workdir / "sequential"), str(out))
    result = {"seconds": round(seconds, 2), **json.loads(report.read_text()),
              "generation_seconds": round(_generation_seconds(out), 2)}
    print(f"sequential: {result['seconds']:.1f}s wall ({result['loop_seconds']:.1f}s in the loop, "
          f"{result['threads']} torch thread(s)), model loads {result['model_loads']}, "
          f"indexes built {result['indexes_built']} (loaded {result['indexes_loaded']})", flush=True)
    return result


def run_engine(args: argparse.Namespace, sweep_file: Path, workdir: Path, env: dict[str, str], n: int) -> dict:
    name = f"bench{n}"
    command = [sys.executable, "-m", "slm_ray.sweep", str(sweep_file), "--name", name]
    if args.dashboard != "auto":
        command.append(f"--{'' if args.dashboard == 'on' else 'no-'}dashboard")
    seconds = _timed(command, env, workdir / f"engine{n}.log")
    sweep_dir = workdir / "outputs" / "sweeps" / name
    last = json.loads((sweep_dir / "sweep_stats.json").read_text())["last_run"]
    result = {"seconds": round(seconds, 2), "sweep_seconds": last["wall_seconds"],
              "ray_connect_seconds": last.get("ray_connect_seconds"), "dashboard": bool(last.get("dashboard_url")),
              "generation_seconds": round(_generation_seconds(sweep_dir / "trials"), 2),
              "model_loads": last.get("model_loads"), "model_loads_per_actor": last.get("model_loads_per_actor"),
              "indexes_built": last.get("indexes_built"), "indexes_loaded": last.get("indexes_loaded"),
              "outcome": last.get("trials_outcome"), "max_concurrent_trials": last.get("max_concurrent_trials")}
    print(f"engine:     {result['seconds']:.1f}s wall ({result['sweep_seconds']:.1f}s in run_sweep, of which "
          f"{result['ray_connect_seconds']:.1f}s starting Ray; dashboard {'on' if result['dashboard'] else 'off'}), "
          f"model loads {result['model_loads']} (per actor {result['model_loads_per_actor']}), indexes built "
          f"{result['indexes_built']} (loaded {result['indexes_loaded']}), {result['max_concurrent_trials']} "
          f"trial(s) at a time, outcome {result['outcome']}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny_llama,tiny_qwen3")
    parser.add_argument("--modes", default="no_context,oracle_context,retriever_context")
    parser.add_argument("--retrievers", default="bm25")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--cpus", type=float, default=1, help="CPUs per generator worker")
    parser.add_argument("--concurrency", type=int, default=0, help="max concurrent trials (0: auto)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the sequential process (0: torch's default, all cores)")
    parser.add_argument("--dashboard", choices=("auto", "on", "off"), default="auto",
                        help="the engine's local Ray dashboard (auto: as the sweep command decides)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating which side goes first")
    parser.add_argument("--label", default=None, help="key of this configuration in --json (default: from the options)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run when given")
    parser.add_argument("--json", type=Path, default=None, help="also record the numbers in this file, under --label")
    parser.add_argument("--sequential-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sequential_child:
        sweep_file, report = args.sequential_child
        return sequential_child(sweep_file, sweep_file.parent / "sequential", args.threads, report)

    if args.json:
        args.json = args.json.resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_sweep_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    cache = workdir / "cache"
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}  # a throwaway local Ray
    from slm_ray.sweeps.spec import load_sweep

    sweep_file = _sweep_file(workdir, args, cache)
    plan = load_sweep(sweep_file)
    print(f"{len(plan.trials)} trials: {', '.join(t.name for t in plan.trials)}; {args.limit} questions each",
          flush=True)
    warm_up(plan)

    rounds = []
    for n in range(args.repeats):
        shutil.rmtree(cache / "retrievals", ignore_errors=True)  # both sides query the retriever for real
        first, second = (run_sequential, run_engine) if n % 2 == 0 else (run_engine, run_sequential)
        a = first(args, sweep_file, workdir, env, n)
        shutil.rmtree(cache / "retrievals", ignore_errors=True)
        b = second(args, sweep_file, workdir, env, n)
        sequential, engine = (a, b) if first is run_sequential else (b, a)
        ratio = engine["seconds"] / sequential["seconds"]
        rounds.append({"sequential": sequential, "engine": engine, "ratio": round(ratio, 3),
                       "extra_seconds": round(engine["seconds"] - sequential["seconds"], 2),
                       "generation_ratio": round(engine["generation_seconds"] / sequential["generation_seconds"], 3)})
        print(f"round {n + 1}: engine / sequential {ratio:.3f} (target <= 1.15), {rounds[-1]['extra_seconds']:+.1f}s; "
              f"time inside the generators engine / sequential {rounds[-1]['generation_ratio']:.3f}", flush=True)
    ratios = [r["ratio"] for r in rounds]
    median = statistics.median(ratios)
    print(f"ratio engine / sequential: median {median:.3f} over {len(ratios)} round(s) {ratios} (target <= 1.15)")
    label = args.label or (f"{args.limit}q-{args.cpus:g}cpu-workers-{args.threads}thread-sequential-"
                           f"dashboard-{args.dashboard}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "trials": len(plan.trials), "limit": args.limit,
              "models": args.models, "retrievers": args.retrievers, "cpus_per_worker": args.cpus,
              "sequential_threads": args.threads, "dashboard": args.dashboard, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "median_ratio": round(median, 3), "rounds": rounds}
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
        previous[label] = result
        args.json.write_text(json.dumps(previous, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
