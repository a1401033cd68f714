"""What owning the run folder costs: the lock, the inputs fingerprint, the per-batch segment record
and the strict prediction reader, against the work they guard, on the built-in NQ.

Run from the repository root (about a minute on 2 CPU cores)::

    .venv/bin/python bench/bench_run_folder.py
    .venv/bin/python bench/bench_run_folder.py --limit 200 --repeats 5

Measured in one process:

1. the inputs fingerprint of a run over all 2,655 NQ questions (examples digest; plus the corpus
   digest for retriever_context) against loading those questions (``build_dataset``), which every
   run does anyway;
2. taking and releasing a run folder's lock;
3. reading 2,655 prediction lines with the strict reader (``read_predictions``: checks every line,
   duplicates, the torn tail) against a plain ``json.loads`` per line (what was there before);
4. a whole closed-book run of the tiny Llama (``--limit`` questions, batches of 8) with the time
   spent in the run folder's bookkeeping (lock, fingerprint, config/inputs writes, per-batch segment
   saves, appends) summed by wrapping those functions, as a share of the run's wall time.

Writes ``bench/results/run_folder.json`` and prints a table of ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import slm_ray.inputs as inputs_module
import slm_ray.store.run_folder as run_folder
from slm_ray.composition import compose_config
from slm_ray.experiment import build_dataset, run_experiment


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def fingerprint_cost(repeats: int, cache: Path) -> dict[str, float]:
    closed = compose_config([f"experiment.cache_dir={cache}", "tracker=none"])
    rag = compose_config([f"experiment.cache_dir={cache}", "tracker=none", "experiment_mode=retriever_context"])
    load = best_of(repeats, lambda: build_dataset(closed))
    examples = build_dataset(closed)
    inputs = best_of(repeats, lambda: inputs_module.run_inputs(closed, examples))
    inputs_rag = best_of(repeats, lambda: inputs_module.run_inputs(rag, examples))
    return {"dataset_load_s": load, "inputs_s": inputs, "inputs_with_corpus_s": inputs_rag,
            "inputs_over_load": inputs / load, "inputs_with_corpus_over_load": inputs_rag / load}


def lock_cost(repeats: int, root: Path) -> dict[str, float]:
    def cycle() -> None:
        for i in range(100):
            run_folder.FolderLock(root / f"run{i % 5}").acquire().release()

    return {"lock_cycle_ms": best_of(repeats, cycle) * 10.0}


def reader_cost(repeats: int, root: Path) -> dict[str, float]:
    path = root / run_folder.PREDICTIONS
    row = {"question": "who wrote the song " * 3, "answers": ["an answer"], "contexts": None,
           "context_truncated": False, "prediction": "a prediction of a few words", "prompt_tokens": 40,
           "generated_tokens": 9, "metrics": {"token_recall": 0.5, "exact_match": 0.0, "f1": 0.3, "match": 0.0}}
    path.write_text("".join(json.dumps({"id": f"nq-{i}", **row}) + "\n" for i in range(2655)))

    def plain() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    strict = best_of(repeats, lambda: run_folder.read_predictions(path))
    before = best_of(repeats, plain)
    return {"strict_reader_s": strict, "plain_reader_s": before, "strict_over_plain": strict / before}


def run_share(limit: int, cache: Path, root: Path) -> dict[str, float]:
    """Wrap the run folder's writing functions, run a real tiny experiment, sum their time."""
    spent = {"s": 0.0}
    targets = [(run_folder.FolderLock, "acquire"), (run_folder.FolderLock, "release"),
               (run_folder.RunSession, "start"), (run_folder.RunSession, "append"),
               (run_folder.RunSession, "save_segment"), (run_folder.RunSession, "finish"),
               (run_folder.RunSession, "__init__")]
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - started
        return wrapper

    import slm_ray.experiment as experiment

    original_inputs = experiment.run_inputs
    for owner, name, fn in originals:
        setattr(owner, name, timed(fn))
    experiment.run_inputs = timed(original_inputs)
    try:
        cfg = compose_config([f"experiment.cache_dir={cache}", f"experiment.output_dir={root}", "tracker=none",
                              "model=tiny_llama", f"dataset.limit={limit}", "model.batch_size=8",
                              "experiment.name=bench"])
        started = time.perf_counter()
        run_experiment(cfg, show_progress=False)
        total = time.perf_counter() - started
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
        experiment.run_inputs = original_inputs
    return {"run_s": total, "bookkeeping_s": spent["s"], "bookkeeping_share": spent["s"] / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "out", Path(tmp) / "cache"
        root.mkdir()
        results = {**fingerprint_cost(args.repeats, cache), **lock_cost(args.repeats, root),
                   **reader_cost(args.repeats, root), **run_share(args.limit, cache, root)}
    out = Path(__file__).parent / "results" / "run_folder.json"
    out.write_text(json.dumps({k: round(v, 6) for k, v in results.items()}, indent=2) + "\n")
    rows = [("inputs fingerprint / loading the 2,655 questions", results["inputs_over_load"]),
            ("  with the built-in corpus digest", results["inputs_with_corpus_over_load"]),
            ("strict prediction reader / plain json.loads (2,655 lines)", results["strict_over_plain"]),
            (f"run folder bookkeeping / whole tiny run ({args.limit} questions)", results["bookkeeping_share"])]
    for label, ratio in rows:
        print(f"{label:<62} {ratio:6.3f}")
    print(f"lock take + release: {results['lock_cycle_ms']:.3f} ms; tiny run {results['run_s']:.1f} s, "
          f"of which bookkeeping {results['bookkeeping_s'] * 1000:.0f} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
