"""The Tune trainable of a sweep: one trial, run on the actor that keeps its generator loaded.

Tune runs ``run_trial`` in a trial actor holding the trial's resources and, with ``reuse_actors``,
hands the same actor the next trial of the same resources. The generator stays loaded in the
actor's process between trials (``_HELD``) and is swapped only when the next trial's model differs;
the sweep orders trials by model, so each actor loads each model once.

What the trial reports to Tune: a ``started`` result at once (every key it will report later, since
Tune's progress.csv keeps the columns of the first result), running progress every few seconds,
and the final metrics. An exception in the trial is its result (``status: failed``): it would fail
the same way again. A lost process (killed, out of memory, a node gone) is what Tune's
``FailureConfig`` retries; the retry resumes from the trial's run folder.

A node that does not see the driver's disk (no shared storage) sends its new prediction lines and,
at the end, its small files with the results (``MIRROR_*`` keys), which the driver writes into its
copy and removes from the result before Tune's loggers see it.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from slm_ray.store.results import METRICS

log = logging.getLogger("slm_ray.sweeps.trainable")

#: Seconds between two progress reports (each one waits for the driver to take it).
REPORT_EVERY_S = 2.0
MIRROR_LINES = "mirror_lines"
MIRROR_FILES = "mirror_files"
#: Every key a trial reports, empty for now (the first result fixes Tune's progress.csv columns).
STARTED = {"examples_done": 0, "examples_per_second": 0.0, "peak_rss_mb": 0.0, "peak_gpu_mb": 0.0,
           "torch_peak_allocated_mb": 0.0, "error": "",
           **{f"running_{m}": float("nan") for m in METRICS},
           **{f"{m}{end}": float("nan") for m in METRICS for end in ("", "_ci_low", "_ci_high")}}

#: The generator this process holds between trials, and every model it loaded.
_HELD: dict[str, Any] = {"key": None, "name": None, "generator": None, "loads": {}, "load_seconds": {}}


def release_other_models(model_key: str) -> None:
    """Close the held generator unless it serves ``model_key``: called before a trial's memory
    monitor starts, so the previous model's memory (a vLLM engine's processes) is not counted in it."""
    if _HELD["generator"] is not None and _HELD["key"] != model_key:
        _HELD["generator"].close()
        _HELD.update(key=None, name=None, generator=None)
        gc.collect()


def held_generator(cfg: Any, model_key: str) -> Any:
    """This process's generator for ``cfg``: the one it holds when the model is the same, else a new one."""
    release_other_models(model_key)
    if _HELD["generator"] is not None:
        return _HELD["generator"]
    from slm_ray.experiment import build_generator

    started = time.perf_counter()
    generator = build_generator(cfg)
    _HELD.update(key=model_key, name=cfg.model.name, generator=generator)
    _HELD["loads"][cfg.model.name] = _HELD["loads"].get(cfg.model.name, 0) + 1
    _HELD["load_seconds"][cfg.model.name] = round(time.perf_counter() - started, 3)
    return generator


def run_trial(config: dict[str, Any], seeds: dict[str, dict[str, str]] | None = None) -> None:
    """Run (or resume) one trial of the sweep; ``config`` is what the driver planned for it."""
    import ray
    from ray import tune

    from slm_ray.config import validate_config
    from slm_ray.errors import describe_error
    from slm_ray.experiment import output_dir, run_experiment
    from slm_ray.logs import setup_actor_logging
    from slm_ray.retrieval.service import RetrieverClient, enter_project_dir
    from slm_ray.store.sweep_folder import SweepFolder

    os.environ.update(config.get("env") or {})  # the sweep's worker_env (a node-local root, ClearML's cache)
    setup_actor_logging(f"generator-{os.getpid()}")
    enter_project_dir(config["driver_cwd"])
    started = time.time()
    cfg = validate_config(config["config"])
    out = output_dir(cfg)
    # sweep_dir is relative to the project folder: on a node with its own root it names that node's copy
    mirror = not SweepFolder(config["sweep_dir"]).shows_run(config["run_id"])
    if mirror:
        _merge_seed(out, (seeds or {}).get(config["name"]) or {})
    loads_before = sum(_HELD["loads"].values())
    context = ray.get_runtime_context()  # where Tune placed this trial and what it gave it
    where = {"pid": os.getpid(), "node_id": context.get_node_id(), "actor_id": context.get_actor_id(),
             "placement_group_id": context.get_placement_group_id(), "mirrored": mirror,
             "trial_resources": context.get_assigned_resources()}
    tune.report({**STARTED, **where, "status": "started"})
    retriever = RetrieverClient(config["retriever_actor"], config["namespace"]) if config["retriever_actor"] else None
    progress = _Progress(out, mirror)
    release_other_models(config["model_key"])
    try:
        results = run_experiment(cfg, generator=lambda c: held_generator(c, config["model_key"]), retriever=retriever,
                                 progress=progress, show_progress=False, expected_inputs=config.get("inputs") or {})
    except Exception as exc:  # the trial's result: a retry would fail the same way
        log.info("trial %s failed", config["name"], exc_info=True)  # the traceback, for sweep.log
        from slm_ray.errors import FolderUnusable

        from slm_ray.redaction import config_secrets, redact

        error = redact(describe_error(exc), config_secrets(config["config"]))  # Tune's files keep it too
        tune.report({**progress.pending_lines(), **where, "status": "failed", "error": error,
                     "write_fault": isinstance(exc, FolderUnusable),  # a full or read-only disk: stop the sweep
                     "model_loads": dict(_HELD["loads"]), "seconds": round(time.time() - started, 3)})
        return
    extra: dict[str, Any] = progress.pending_lines()
    if mirror:
        extra[MIRROR_FILES] = _trial_files(out)
    tune.report({**final_metrics(results), **where, **extra, "status": "ok",
                 "model_loaded_now": sum(_HELD["loads"].values()) > loads_before,
                 "model_load_seconds": _HELD["load_seconds"].get(cfg.model.name),
                 "model_loads": dict(_HELD["loads"]), "seconds": round(time.time() - started, 3),
                 "worker_span": [round(started, 3), round(time.time(), 3)]})


class _Progress:
    """run_experiment's progress callback: a Tune result every ``REPORT_EVERY_S`` at most, carrying
    the new prediction lines where the driver cannot read this node's disk."""

    def __init__(self, out: Path, mirror: bool):
        self.out = out
        self.mirror = mirror
        self.sent = 0
        self.last = 0.0

    def pending_lines(self) -> dict[str, Any]:
        if not self.mirror:
            return {}
        from slm_ray.store.run_folder import PREDICTIONS, complete_lines

        lines = complete_lines(self.out / PREDICTIONS)
        new, self.sent = lines[self.sent:], len(lines)
        return {MIRROR_LINES: new} if new else {}

    def __call__(self, values: dict[str, float]) -> None:
        if time.monotonic() - self.last < REPORT_EVERY_S:
            return
        self.last = time.monotonic()
        from ray import tune

        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        tune.report({**clean, **self.pending_lines(), "status": "running"})


def final_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers Tune keeps for a finished trial (every metric with its interval)."""
    from slm_ray.store.results import Results

    typed = Results.model_validate(results)
    metrics: dict[str, Any] = {"examples_done": typed.n_examples}
    for key, value in typed.metrics.items():
        metrics.update({key: value.mean, f"{key}_ci_low": value.ci_low, f"{key}_ci_high": value.ci_high})
    flat = typed.flat()
    metrics["examples_per_second"] = flat["examples_per_second"]
    metrics["peak_rss_mb"] = flat["model_peak_rss_mb"]
    return metrics


def _trial_files(out: Path) -> dict[str, str]:
    """The small files of a finished trial, for the driver's copy."""
    from slm_ray.store.run_folder import CONFIG, INPUTS, LOG, MEMORY, RESULTS, SEGMENTS

    return {name: (out / name).read_text(encoding="utf-8") for name in (RESULTS, MEMORY, CONFIG, INPUTS, SEGMENTS, LOG)
            if (out / name).is_file()}


def _merge_seed(out: Path, seed: dict[str, str]) -> None:
    """Before resuming on a node with its own disk: add the driver's copy of the trial's predictions
    (with the inputs and segments they belong to, which run_experiment then checks as usual)."""
    from slm_ray.store.io import atomic_write_text
    from slm_ray.store.run_folder import CONFIG, INPUTS, PREDICTIONS, SEGMENTS, complete_lines, prediction_ids, unseen_lines

    if not seed:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, INPUTS, SEGMENTS):
        if seed.get(name) and not (out / name).is_file():
            atomic_write_text(out / name, seed[name])
    lines = complete_lines(out / PREDICTIONS)
    extra = unseen_lines((seed.get(PREDICTIONS) or "").splitlines(), set(prediction_ids(lines)))
    if extra:
        atomic_write_text(out / PREDICTIONS, "".join(line + "\n" for line in [*lines, *extra]))

