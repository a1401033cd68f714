"""Generator workers (long-lived actors that keep a model loaded) and the pool that hands them out.

A worker holds the resources of one trial shape (CPUs, GPUs) and at most one loaded generator. The
pool, an async actor named in the sweep's namespace, gives each trial a worker:

1. an idle worker that already holds the trial's model;
2. else an idle worker of the same shape that holds no model, or one whose model has no trials left;
3. else a new worker, while there are fewer workers than trials allowed to run at once;
4. else an idle worker of the same shape (it switches model), or, failing that, an idle worker of
   another shape is retired and replaced by a new one.

The sweep orders trials by model, so rule 1 and 2 mean each worker loads each model once.
Every worker counts its own model loads; the pool keeps what each worker reported, including
workers it retired. The pool also relays progress (and, for nodes that do not share the driver's
disk, new prediction lines) from the workers to the trial functions.

The classes are plain; the engine and the pool wrap them with ``ray.remote`` when they are needed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from slm_ray.retrieval.service import RetrieverClient, enter_project_dir
from slm_ray.run_folder import (CONFIG, INPUTS, LOG, MEMORY, PREDICTIONS, RESULTS, SEGMENTS, complete_lines,
                                prediction_ids, unseen_lines)

log = logging.getLogger("slm_ray.sweeps")

#: Small files of a trial folder copied back to the driver's disk when a worker's node has its own.
TRIAL_FILES = (RESULTS, MEMORY, CONFIG, INPUTS, SEGMENTS, LOG)
RUN_MARKER = ".run_id"


_REMOTE_CLASSES: dict[type, Any] = {}


def ray_class(cls: type) -> Any:
    """``ray.remote(cls)``, made once per process."""
    if cls not in _REMOTE_CLASSES:
        import ray

        _REMOTE_CLASSES[cls] = ray.remote(cls)
    return _REMOTE_CLASSES[cls]


def same_run_dir(sweep_dir: str, run_id: str) -> bool:
    """Whether this process sees the driver's sweep folder (same machine or shared storage)."""
    try:
        return (Path(sweep_dir) / RUN_MARKER).read_text().strip() == run_id
    except OSError:
        return False


class GeneratorWorker:
    """The body of a generator actor: runs trials with a generator it keeps loaded between them."""

    def __init__(self, name: str, namespace: str, pool_name: str, driver_cwd: str | None = None):
        from slm_ray.logs import setup_actor_logging

        setup_actor_logging(name)
        self.cwd = enter_project_dir(driver_cwd)
        self.name = name
        self.namespace = namespace
        self.pool_name = pool_name
        self.generator: Any = None
        self.model_key: str | None = None
        self.model_name: str | None = None
        self.loads: dict[str, int] = {}
        self.load_seconds: dict[str, float] = {}
        self.trials: list[str] = []
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "node_id": self.node_id, "pid": os.getpid(), "cwd": self.cwd,
                "model": self.model_name, "loads": dict(self.loads), "trials": list(self.trials)}

    def _ensure_model(self, cfg: Any, model_key: str) -> bool:
        """Keep the loaded generator when the trial's model is the same; else swap it. True if loaded now."""
        if self.generator is not None and self.model_key == model_key:
            return False
        from slm_ray.experiment import build_generator

        if self.generator is not None:
            log.info("%s: unloading %s for %s", self.name, self.model_name, cfg.model.name)
            self.generator.close()
            self.generator, self.model_key, self.model_name = None, None, None
            gc.collect()
        started = time.perf_counter()
        self.generator = build_generator(cfg)
        self.model_key, self.model_name = model_key, cfg.model.name
        self.loads[cfg.model.name] = self.loads.get(cfg.model.name, 0) + 1
        self.load_seconds[cfg.model.name] = round(time.perf_counter() - started, 3)
        return True

    def sees_driver_disk(self, sweep_dir: str, run_id: str) -> bool:
        return same_run_dir(sweep_dir, run_id)

    def preload(self, config: dict[str, Any], model_key: str) -> dict[str, Any]:
        """Load a model before its first trial arrives (the pool calls this on the workers it prestarts)."""
        from slm_ray.config import validate_config

        self._ensure_model(validate_config(config), model_key)
        return self.info()

    def run_trial(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) one trial; returns its results and where/how it ran."""
        import ray

        from slm_ray.config import validate_config
        from slm_ray.experiment import output_dir, run_experiment

        started = time.time()
        cfg = validate_config(payload["config"])
        out = output_dir(cfg)
        mirror = not same_run_dir(payload["sweep_dir"], payload["run_id"])
        if mirror:
            _merge_seed(out, payload.get("seed") or {})
        self.trials.append(payload["name"])
        loaded_now = self._ensure_model(cfg, payload["model_key"])
        retriever = None
        if payload.get("retriever_actor"):
            retriever = RetrieverClient(payload["retriever_actor"], self.namespace)
        pool = ray.get_actor(self.pool_name, namespace=self.namespace)
        sent = 0

        def progress(values: dict[str, float]) -> None:
            nonlocal sent
            lines: list[str] = []
            if mirror:
                current = complete_lines(out / PREDICTIONS)
                lines, sent = current[sent:], len(current)
            clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
            pool.push.remote(payload["name"], clean, lines)

        results = run_experiment(cfg, generator=self.generator, retriever=retriever, progress=progress,
                                 show_progress=False, expected_inputs=payload.get("inputs") or {})
        files = None
        if mirror:
            files = {name: (out / name).read_text(encoding="utf-8") for name in (*TRIAL_FILES, PREDICTIONS)
                     if (out / name).is_file()}
        return {"results": results, "node_id": self.node_id, "actor": self.name, "pid": os.getpid(),
                "model_loaded_now": loaded_now, "model_load_seconds": self.load_seconds.get(cfg.model.name),
                "loads": dict(self.loads), "mirrored": mirror, "files": files,
                "seconds": round(time.time() - started, 3), "worker_span": [round(started, 3), round(time.time(), 3)]}


def _merge_seed(out: Path, seed: dict[str, str]) -> None:
    """Before resuming on a node with its own disk: add the driver's copy of the trial's predictions
    (with the inputs and segments they belong to, which run_experiment then checks as usual)."""
    from slm_ray.io import atomic_write_text

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


def start_worker(name: str, namespace: str, pool_name: str, shape: tuple[float, float], driver_cwd: str | None,
                 worker_env: dict[str, str] | None) -> Any:
    """Create a generator worker actor holding ``shape`` = (CPUs, GPUs), spread over the nodes."""
    options: dict[str, Any] = {"name": name, "namespace": namespace, "num_cpus": shape[0], "num_gpus": shape[1],
                               "scheduling_strategy": "SPREAD", "max_restarts": 0}
    if worker_env:
        options["runtime_env"] = {"env_vars": dict(worker_env)}
    return ray_class(GeneratorWorker).options(**options).remote(name, namespace, pool_name, driver_cwd)


def prestart_workers(namespace: str, pool_name: str, first: list[tuple[str, float, float, dict[str, Any]]],
                     driver_cwd: str | None, worker_env: dict[str, str] | None) -> list[tuple[str, Any, tuple, str]]:
    """Workers for the first trials, loading their models at once (the driver starts them before
    anything else, so that their processes come first in Ray's start queue); the pool adopts them.

    ``first``: (model key, cpus, gpus, config) of the first trials in the sweep's order.
    """
    started = []
    for i, (model_key, cpus, gpus, config) in enumerate(first, start=1):
        shape = (float(cpus), float(gpus))
        handle = start_worker(f"generator-{i}", namespace, pool_name, shape, driver_cwd, worker_env)
        handle.preload.remote(config, model_key)
        started.append((f"generator-{i}", handle, shape, model_key))
    return started


class WorkerPool:
    """The body of the pool actor (async): assigns workers to trials and relays their progress."""

    def __init__(self, namespace: str, name: str, remaining: dict[str, int], max_workers: int,
                 driver_cwd: str | None = None, worker_env: dict[str, str] | None = None,
                 workers: list[tuple[str, Any, tuple, str]] | None = None):
        self.namespace = namespace
        self.name = name
        self.remaining = dict(remaining)
        self.max_workers = max(1, int(max_workers))
        self.driver_cwd = driver_cwd
        self.worker_env = dict(worker_env or {})
        self.workers: dict[str, dict[str, Any]] = {}
        self.retired: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.progress: dict[str, dict[str, float]] = {}
        self.lines: dict[str, list[str]] = {}
        self._changed: asyncio.Condition | None = None
        for worker_name, handle, shape, model_key in workers or []:
            self.created += 1
            self.workers[worker_name] = self._record(worker_name, handle, tuple(shape))
            self.workers[worker_name]["model_key"] = model_key

    @staticmethod
    def _record(name: str, handle: Any, shape: tuple[float, float]) -> dict[str, Any]:
        return {"name": name, "handle": handle, "shape": shape, "model_key": None, "busy": False, "trial": None,
                "last_used": time.monotonic(), "loads": {}, "node_id": None, "trials": []}

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, trial: str, model_key: str, cpus: float, gpus: float) -> tuple[str, Any]:
        """A worker for ``trial`` (see the module docstring for the order of preference)."""
        shape = (float(cpus), float(gpus))
        changed = self._condition()
        async with changed:
            while True:
                worker = self._pick(model_key, shape)
                if worker is not None:
                    worker["busy"] = True
                    worker["trial"] = trial
                    worker["last_used"] = time.monotonic()
                    self.remaining[model_key] = max(0, self.remaining.get(model_key, 0) - 1)
                    worker["model_key"] = model_key
                    return worker["name"], worker["handle"]
                await changed.wait()

    def _pick(self, model_key: str, shape: tuple[float, float]) -> dict[str, Any] | None:
        idle = sorted((w for w in self.workers.values() if not w["busy"]), key=lambda w: w["last_used"])
        same_shape = [w for w in idle if w["shape"] == shape]
        for w in same_shape:
            if w["model_key"] == model_key:
                return w
        for w in same_shape:
            if w["model_key"] is None or self.remaining.get(w["model_key"], 0) == 0:
                return w
        if len(self.workers) < self.max_workers:
            return self._create(shape)
        if same_shape:
            return same_shape[0]
        if idle:
            done = [w for w in idle if self.remaining.get(w["model_key"], 0) == 0]
            self._retire((done or idle)[0])
            return self._create(shape)
        return None

    def _create(self, shape: tuple[float, float]) -> dict[str, Any]:
        self.created += 1
        name = f"generator-{self.created}"
        handle = start_worker(name, self.namespace, self.name, shape, self.driver_cwd, self.worker_env)
        self.workers[name] = self._record(name, handle, shape)
        log.info("pool: started %s (cpus=%s, gpus=%s)", name, *shape)
        return self.workers[name]

    def _retire(self, worker: dict[str, Any]) -> None:
        import ray

        self.workers.pop(worker["name"], None)
        self.retired[worker["name"]] = worker
        try:
            ray.kill(worker["handle"], no_restart=True)
        except Exception:  # already gone
            pass

    async def release(self, name: str, trial: str, report: dict[str, Any] | None = None, dead: bool = False) -> None:
        """A trial is done with its worker; ``report`` carries the worker's own counters."""
        worker = self.workers.get(name)
        if worker is None:
            return
        if report:
            worker["loads"] = dict(report.get("loads") or worker["loads"])
            worker["node_id"] = report.get("node_id") or worker["node_id"]
        worker["trials"].append(trial)
        worker["busy"] = False
        worker["trial"] = None
        worker["last_used"] = time.monotonic()
        if dead:
            worker["dead"] = True
            self._retire(worker)
        changed = self._condition()
        async with changed:
            changed.notify_all()

    async def push(self, trial: str, values: dict[str, float], lines: list[str]) -> None:
        if values:
            self.progress[trial] = values
        if lines:
            self.lines.setdefault(trial, []).extend(lines)

    async def pull(self, trial: str) -> tuple[dict[str, float] | None, list[str]]:
        return self.progress.get(trial), self.lines.pop(trial, [])

    async def stats(self) -> dict[str, Any]:
        """Every worker the pool started: node, shape, trials, and its model loads."""
        out = {}
        for name, w in {**self.retired, **self.workers}.items():
            out[name] = {"node_id": w["node_id"], "cpus": w["shape"][0], "gpus": w["shape"][1],
                         "loads": w["loads"], "trials": w["trials"], "retired": name in self.retired,
                         "died": bool(w.get("dead"))}
        return {"workers": out, "created": self.created}

    async def shutdown(self) -> None:
        for worker in list(self.workers.values()):
            self._retire(worker)
