"""Run a sweep plan on Ray: shared retriever actors, a pool of generator workers, Ray Tune on top.

Tune drives the trials (one grid-search sample per pending trial, ``max_concurrent_trials`` at a
time, a failed trial recorded and the others continued). A Tune trial is a light function pinned
to the driver's node: it borrows a generator worker from the pool, has it run the trial, reports
the worker's progress to Tune, and writes the trial's bookkeeping (``trial.json``) next to the
trial's files on the driver's disk. Workers on nodes without the driver's disk send their
prediction lines back as they go, so the driver's copy is always the one to resume from.

Resuming: trials whose ``results.json`` is there (for the same config) are skipped before anything
starts; an interrupted trial continues from its predictions (``run_experiment`` resumes).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from slm_ray.io import atomic_write_json, atomic_write_text
from slm_ray.results import METRICS
from slm_ray.sweeps import console
from slm_ray.sweeps.spec import SweepError, SweepPlan, Trial
from slm_ray.sweeps.summary import write_summary

log = logging.getLogger("slm_ray.sweep")

POOL_NAME = "generator-pool"
POLL_SECONDS = 1.0
TRIAL_RECORD = "trial.json"
#: How many times a trial whose generator worker died is resumed on a new worker.
WORKER_RETRIES = 2


#: What a trial reports once it has a worker: every key it will report later, empty for now.
#: Tune's progress.csv takes its columns from a trial's first report and drops keys that come later.
STARTED = {"examples_done": 0, "examples_per_second": 0.0, "peak_rss_mb": 0.0, "peak_gpu_mb": 0.0,
           "torch_peak_allocated_mb": 0.0, "node_id": None,
           **{f"running_{m}": float("nan") for m in METRICS},
           **{f"{m}{end}": float("nan") for m in METRICS for end in ("", "_ci_low", "_ci_high")}}


class TrialFailed(RuntimeError):
    """A trial's experiment raised: the message is the original error, in one line."""


# --- resume bookkeeping (no Ray) --------------------------------------------------------------------

def trial_dir(trial: Trial, base: Path) -> Path:
    """Where the trial's files are, seen from ``base`` (the driver's working directory)."""
    return (base / trial.config.experiment.output_dir / trial.name).resolve()


def trial_state(trial: Trial, base: Path, datasets: dict[str, Any] | None = None,
                checked: dict[str, dict[str, Any]] | None = None) -> str:
    """``complete`` (its folder holds results for these very inputs), ``partial`` (answers to resume)
    or ``new``. A folder holding answers for other inputs (the sweep file, the overrides or the data
    changed) is refused before anything runs, unless ``experiment.replace=true``.

    ``datasets`` memoises loaded examples by dataset config across the trials of a sweep. A dataset
    the driver cannot read leaves the decision to the trial (it fails alone, with that error).
    ``checked`` receives the inputs checked for each trial: its worker refuses data changed since.
    """
    from slm_ray.errors import SlmRayError
    from slm_ray.experiment import build_dataset
    from slm_ray.fingerprints import stable_hash
    from slm_ray.run_folder import FolderUnusable, InputsChanged, RunFolder, run_inputs

    cfg = trial.config
    folder = RunFolder(trial_dir(trial, base))
    datasets = {} if datasets is None else datasets
    key = stable_hash([cfg.dataset.model_dump(by_alias=True), cfg.experiment.cache_dir])
    try:
        if key not in datasets:
            datasets[key] = build_dataset(cfg)
        inputs = run_inputs(cfg, datasets[key])
        if checked is not None:
            checked[trial.name] = inputs.to_json()
    except SlmRayError as exc:
        log.warning("trial %s: %s", trial.name, exc)
        return "partial" if folder.has_answers() else "new"
    try:
        return folder.state(inputs, replace=cfg.experiment.replace)
    except FolderUnusable as exc:
        raise SweepError(f"trial {trial.name}: {exc}") from None
    except InputsChanged as exc:
        raise SweepError(f"trial {trial.name}: {exc} (a new sweep folder: --name NAME)") from None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the Tune trial function ---------------------------------------------------------------------------

def run_trial(config: dict[str, Any], *, trials: dict[int, dict[str, Any]], ctx: dict[str, Any]) -> None:
    """One Tune trial: borrow a worker, run the trial on it, stream its progress, record the outcome."""
    import ray
    from ray import tune

    spec = trials[config["trial"]]
    head = Path(ctx["trials_dir"]) / spec["name"]
    pool = ray.get_actor(ctx["pool"], namespace=ctx["namespace"])
    started = time.time()
    deaths: list[str] = []
    while True:  # a worker that dies (killed, OOM-killed, node lost) is replaced; the trial resumes
        worker_name, worker = ray.get(pool.acquire.remote(spec["name"], spec["model_key"], spec["cpus"], spec["gpus"]))
        record: dict[str, Any] = {"run_id": ctx["run_id"], "trial": spec["name"], "actor": worker_name,
                                  "retriever_actor": spec.get("retriever_actor"), "started": now_iso(),
                                  "worker_deaths": list(deaths)}
        tune.report({**STARTED, "status": "started", "actor": worker_name})
        try:
            out = _run_on_worker(spec, ctx, head, pool, worker_name, worker)
            break
        except ray.exceptions.RayActorError as exc:
            ray.get(pool.release.remote(worker_name, spec["name"], None, True))
            message = f"generator actor {worker_name} died: {_first_line(exc)}"
            deaths.append(message)
            if len(deaths) <= WORKER_RETRIES:
                log.warning("trial %s: %s; resuming on a new worker (%d/%d)", spec["name"], message,
                            len(deaths), WORKER_RETRIES)
                continue
            _write_record(head, {**record, "status": "failed", "error": message, "worker_deaths": deaths,
                                 "seconds": round(time.time() - started, 3)})
            raise TrialFailed(message) from None
        except ray.exceptions.RayTaskError as exc:
            ray.get(pool.release.remote(worker_name, spec["name"], None, False))
            cause = getattr(exc, "cause", None) or exc
            message = f"{type(cause).__name__}: {_first_line(cause)}"
            _write_record(head, {**record, "status": "failed", "error": message,
                                 "seconds": round(time.time() - started, 3)})
            raise TrialFailed(message) from None
    ray.get(pool.release.remote(worker_name, spec["name"], {"loads": out["loads"], "node_id": out["node_id"]}, False))
    if out.get("files"):
        for name, text in out["files"].items():
            atomic_write_text(head / name, text)
    results = out["results"]
    _write_record(head, {**record, "status": "ok", "error": None, "node_id": out["node_id"], "pid": out["pid"],
                         "model_loaded_now": out["model_loaded_now"], "model_load_seconds": out["model_load_seconds"],
                         "mirrored": out["mirrored"], "seconds": out["seconds"], "finished": now_iso(),
                         "worker_span": out["worker_span"],
                         "worker_deaths": deaths})
    tune.report({**final_metrics(results), "status": "ok", "actor": worker_name, "node_id": out["node_id"]})


def _run_on_worker(spec: dict[str, Any], ctx: dict[str, Any], head: Path, pool: Any, worker_name: str,
                   worker: Any) -> dict[str, Any]:
    """Have ``worker`` run (or resume) the trial, relaying its progress to Tune; its output dict."""
    import ray
    from ray import tune

    from slm_ray.run_folder import PREDICTIONS, append_prediction_lines

    payload = {**spec, "run_id": ctx["run_id"], "seed": {}}
    if not ray.get(worker.sees_driver_disk.remote(spec["sweep_dir"], ctx["run_id"])):
        payload["seed"] = _seed_files(head)  # its node has its own disk: resume from the driver's copy
    head_ids: set[str] | None = None
    last: dict[str, float] | None = None
    ref = worker.run_trial.remote(payload)
    while True:
        ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
        values, lines = ray.get(pool.pull.remote(spec["name"]))
        if lines:  # the driver's mirror of a remote worker's file, each example once
            head_ids = append_prediction_lines(head / PREDICTIONS, lines, head_ids)
        if values and values != last:
            last = values
            tune.report({**values, "status": "running", "actor": worker_name})
        if ready:
            break
    return ray.get(ref)


def final_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers Tune keeps for a finished trial (every metric with its interval)."""
    from slm_ray.results import Results

    typed = Results.model_validate(results)
    metrics: dict[str, Any] = {"examples_done": typed.n_examples}
    for key, value in typed.metrics.items():
        metrics.update({key: value.mean, f"{key}_ci_low": value.ci_low, f"{key}_ci_high": value.ci_high})
    flat = typed.flat()
    metrics["examples_per_second"] = flat["examples_per_second"]
    metrics["peak_rss_mb"] = flat["model_peak_rss_mb"]
    return metrics


def _seed_files(head: Path) -> dict[str, str]:
    """The driver's copy of an interrupted trial, for a worker whose node has its own disk."""
    from slm_ray.run_folder import CONFIG, INPUTS, PREDICTIONS, SEGMENTS

    return {name: (head / name).read_text(encoding="utf-8") for name in (CONFIG, INPUTS, SEGMENTS, PREDICTIONS)
            if (head / name).is_file()}


def _adopt_completed_elsewhere(head: Path) -> None:
    """A trial whose last sweep attempt failed but whose folder now holds results for the sweep's
    very inputs (completed with ``slm-ray run``, as ``--cfg`` prints it): record it as ok."""
    try:
        record = json.loads((head / TRIAL_RECORD).read_text())
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and record.get("status") == "failed":
        _write_record(head, {**record, "status": "ok", "error": None,
                             "note": f"completed outside the sweep after a failed attempt ({record.get('error')})"})


def _write_record(head: Path, record: dict[str, Any]) -> None:
    atomic_write_json(head / TRIAL_RECORD, record)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # RayTaskError text starts with the remote traceback; the cause's own message is the last line
    return lines[-1] if lines else type(exc).__name__


def print_line(text: str) -> None:
    """A driver line, through the sweep's console (module-level, so that Tune can pickle the callback)."""
    console.echo(text)


def _progress_callback(names: dict[int, str], trials_dir: Path, every_s: float = 15.0) -> Any:
    """A Tune callback that prints one line per trial event (and running progress now and then)."""
    from ray.tune import Callback

    echo = print_line

    class _Progress(Callback):
        def __init__(self) -> None:
            self.last_print: dict[str, float] = {}
            self.done = 0
            self.started: set[str] = set()

        def _name(self, trial: Any) -> str:
            return names.get((trial.config or {}).get("trial"), str(trial))

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if console.ACTIVE is not None:
                console.ACTIVE.poll()  # the actors' steps: model loads, index builds

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if console.ACTIVE is not None:
                console.ACTIVE.poll(every_s=0.0)  # a model load posted just before this event comes first
            name = self._name(trial)
            if result.get("status") == "started":  # it has a worker now
                if name not in self.started and console.ACTIVE is not None:
                    console.ACTIVE.trial_started()
                self.started.add(name)
                echo(f"  started   {name} on {result.get('actor')}")
                return
            if result.get("status") != "running" or time.monotonic() - self.last_print.get(name, 0.0) < every_s:
                return
            self.last_print[name] = time.monotonic()
            speed = float(result.get("examples_per_second", 0.0) or 0.0)
            text = (f"  progress  {name}: {int(result.get('examples_done', 0))} examples, {speed:.2f} ex/s, "
                    f"running token recall {result.get('running_token_recall', 0.0):.3f}, "
                    f"peak RSS {result.get('peak_rss_mb', 0.0):.0f} MB")
            if console.ACTIVE is not None:
                console.ACTIVE.progress(text, name, speed)
            else:
                echo(text)

        def _finished(self, name: str, ok: bool) -> None:
            self.done += 1
            if console.ACTIVE is not None:
                console.ACTIVE.poll(every_s=0.0)
                if name not in self.started:
                    console.ACTIVE.trial_started()
                console.ACTIVE.trial_finished(name, ok)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finished(self._name(trial), True)
            result = trial.last_result or {}
            speed = result.get("examples_per_second")
            echo(f"  [{self.done}/{len(names)}] ok     {self._name(trial)}: token recall "
                 f"{result.get('token_recall', float('nan')):.3f} on {result.get('actor')}, "
                 + (f"{speed:.2f} ex/s" if speed else "speed unknown"))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = self._name(trial)
            self._finished(name, False)
            try:
                error = json.loads((trials_dir / name / TRIAL_RECORD).read_text()).get("error") or ""
            except (OSError, ValueError):
                error = "see the Tune error file"
            echo(f"  [{self.done}/{len(names)}] FAILED {name}: {error}")

    return _Progress()


class _TrialNames:
    """Tune's trial name / folder name: the sweep's readable trial name."""

    def __init__(self, names: dict[int, str]):
        self.names = names

    def __call__(self, trial: Any) -> str:
        return self.names[trial.config["trial"]]


# --- the driver ------------------------------------------------------------------------------------------

def run_sweep(plan: SweepPlan, *, address: str | None = None, verbose: int = 0,
              worker_env: dict[str, str] | None = None, echo: Callable[[str], None] = print_line,
              dashboard: bool | None = None) -> dict[str, Any]:
    """Run what is left of ``plan``; write sweep_stats.json and the summary. Returns this run's stats.

    ``address``: an existing Ray cluster (else a local one is started). ``dashboard``: whether that
    local Ray starts its dashboard; None decides by the machine (``dashboard_by_default``).
    ``worker_env``: extra environment variables for the generator and retriever actors.
    """
    from slm_ray.run_folder import PREDICTIONS, RESULTS, FolderLock

    base = Path.cwd()
    sweep_abs = (base / plan.sweep_dir).resolve()
    for name in (PREDICTIONS, RESULTS):
        if (sweep_abs / name).exists():
            raise SweepError(f"{sweep_abs} holds a single run's {name}, not a sweep: pass --name <another name>")
    lock = FolderLock(sweep_abs, "sweep").acquire()  # one driver per sweep folder, for its whole run
    try:
        with console.active(console.SweepConsole()):
            return _run_sweep_locked(plan, base, sweep_abs, address, verbose, worker_env, echo, dashboard)
    finally:
        lock.release(tidy=True)  # removes the folder only if this sweep created it and wrote nothing


def _run_sweep_locked(plan: SweepPlan, base: Path, sweep_abs: Path, address: str | None, verbose: int,
                      worker_env: dict[str, str] | None, echo: Callable[[str], None],
                      dashboard: bool | None) -> dict[str, Any]:
    datasets: dict[str, Any] = {}
    checked: dict[str, dict[str, Any]] = {}
    states = {t.name: trial_state(t, base, datasets, checked) for t in plan.trials}
    del datasets
    for trial in plan.trials:
        if states[trial.name] == "complete":
            _adopt_completed_elsewhere(trial_dir(trial, base))
    pending = [t for t in plan.trials if states[t.name] != "complete"]
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]

    def prepare_folder() -> None:  # once nothing can refuse the sweep any more
        sweep_abs.mkdir(parents=True, exist_ok=True)
        atomic_write_json(sweep_abs / "sweep.json", {**plan.to_json(), "updated": now_iso()})
        if console.ACTIVE is not None:
            console.ACTIVE.attach_file(sweep_abs / console.SWEEP_LOG)
    record: dict[str, Any] = {
        "run_id": run_id, "started": now_iso(), "address": address or "local",
        "trials": {"total": len(plan.trials), "already_complete": len(plan.trials) - len(pending),
                   "resumed": sum(1 for t in pending if states[t.name] == "partial"), "ran": len(pending)},
    }
    started = time.perf_counter()
    complete = len(plan.trials) - len(pending)
    if not pending:
        prepare_folder()
        echo(f"sweep {plan.name}: all {len(plan.trials)} trials are complete; nothing to run")
        record.update({"model_loads": {}, "model_loads_per_actor": {}, "indexes_built": 0, "retriever_actors": []})
    else:
        echo(f"sweep {plan.name}: {len(pending)} of {len(plan.trials)} trials to run"
             + (f" ({complete} already complete)" if complete else ""))
        record.update(_run_on_ray(plan, pending, run_id, base, sweep_abs, address, verbose, worker_env, echo,
                                  prepare_folder, dashboard, checked))
    record["finished"] = now_iso()
    record["wall_seconds"] = round(time.perf_counter() - started, 3)
    _write_stats(sweep_abs, plan.name, record)
    summary = write_summary(sweep_abs)
    record["summary"] = summary["counts"]
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n) or "no trials"
    echo(f"trials: {counts}")
    echo(f"summary: {sweep_abs / 'summary.md'}")
    return record


def _run_on_ray(plan: SweepPlan, pending: list[Trial], run_id: str, base: Path, sweep_abs: Path,
                address: str | None, verbose: int, worker_env: dict[str, str] | None,
                echo: Callable[[str], None], prepare_folder: Callable[[], None],
                dashboard_wanted: bool | None = None,
                checked: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    import ray

    from slm_ray.retrieval.service import RETRIEVER_RESTARTS, RetrieverService
    from slm_ray.sweeps.actors import RUN_MARKER, WorkerPool, prestart_workers, ray_class

    connect_started = time.perf_counter()
    chosen = dashboard_wanted is not None
    if dashboard_wanted is None:
        dashboard_wanted = dashboard_by_default()
    started_here, dashboard = _connect(address, dashboard_wanted)
    connect_seconds = round(time.perf_counter() - connect_started, 3)
    local = started_here and not address and not os.environ.get("RAY_ADDRESS")
    from slm_ray.sweeps.reaper import Reaper

    reaper = Reaper.start() if local else None  # this Ray's processes go when the driver is killed
    if dashboard:
        echo(f"Ray dashboard: {dashboard}")
    elif local and not dashboard_wanted:
        echo("Ray dashboard: off (--no-dashboard)" if chosen else
             f"Ray dashboard: off on this {os.cpu_count()}-CPU machine, where it would slow the trials "
             "(--dashboard turns it on)")
    else:
        echo("Ray dashboard: not available (pip install 'ray[default]')")
    namespace = f"slm_ray-{plan.name}-{run_id}"
    services: dict[str, Any] = {}
    pool = None
    first: list[tuple[str, Any, tuple, str]] = []
    board = None
    quiet_ray = console.ray_logs_to_sweep_log()
    quiet_ray.__enter__()
    try:
        from slm_ray.logs import BOARD_NAME, Board

        # First of all actors, so that every later one finds it when it logs its first step; in the
        # job's own namespace, the one an actor's runtime context names.
        board = ray_class(Board).options(name=BOARD_NAME, num_cpus=0).remote()
        if console.ACTIVE is not None:
            console.ACTIVE.board = board
        shapes = _resolve_shapes(plan, pending, local)
        n_services = len({t.retriever_key for t in pending if t.retriever_key})
        rr = plan.retriever_resources
        capacity = _capacity(set(shapes.values()), n_services, (rr.cpus, rr.gpus or 0.0))
        if capacity < 1 and local:
            raise SweepError(f"this machine cannot hold a generator worker (resources {plan.resources.as_dict()}) "
                             f"next to {n_services} retriever actor(s) (retriever_resources {rr.as_dict()}); "
                             "lower them in the sweep file")
        concurrency = plan.max_concurrent_trials or max(1, capacity)
        if local and concurrency > capacity:
            log.warning("max_concurrent_trials=%d but this machine holds %d workers: using %d",
                        concurrency, capacity, capacity)
            concurrency = capacity
        concurrency = max(1, min(concurrency, len(pending)))
        prepare_folder()
        atomic_write_text(sweep_abs / RUN_MARKER, run_id + "\n")
        payloads: dict[int, dict[str, Any]] = {}
        for trial in pending:
            key = trial.retriever_key
            cpus, gpus = shapes[trial.name]
            payloads[trial.index] = {
                "index": trial.index, "name": trial.name, "config": trial.config.model_dump(by_alias=True),
                "model_key": trial.model_key, "model_name": trial.config.model.name, "cpus": cpus, "gpus": gpus,
                "retriever_actor": f"retriever-{key}" if key else None, "sweep_dir": str(plan.sweep_dir),
                "inputs": (checked or {}).get(trial.name),
            }
        # Start order matters where Ray starts few processes at once (as many as CPUs): the
        # generator workers of the first trials first, then the pool, then the retriever actors.
        first = prestart_workers(namespace, POOL_NAME, [(t.model_key, *shapes[t.name], payloads[t.index]["config"])
                                                        for t in pending[:concurrency]], str(base), worker_env)
        remaining: dict[str, int] = {}
        for trial in pending:
            remaining[trial.model_key] = remaining.get(trial.model_key, 0) + 1
        pool = ray_class(WorkerPool).options(name=POOL_NAME, namespace=namespace, num_cpus=0,
                                             max_concurrency=1000).remote(
            namespace, POOL_NAME, remaining, concurrency, str(base), worker_env, first)
        warmups = []
        for trial in pending:
            key = trial.retriever_key
            if key is not None and key not in services:
                cfg = trial.config
                rr = plan.retriever_resources
                services[key] = ray_class(RetrieverService).options(
                    name=f"retriever-{key}", namespace=namespace, num_cpus=rr.cpus, num_gpus=rr.gpus or 0,
                    **RETRIEVER_RESTARTS, **_runtime_env(worker_env),
                ).remote(key, cfg.retriever.model_dump(by_alias=True), cfg.corpus.model_dump(),
                         cfg.experiment.cache_dir, str(base), int(rr.cpus) or os.cpu_count(),
                         cfg.experiment.memory_interval_s)
                warmups.append(services[key].warmup.remote())
        from ray import tune

        ctx = {"namespace": namespace, "pool": POOL_NAME, "run_id": run_id,
               "trials_dir": str((base / plan.trials_dir).resolve())}
        echo(f"running {len(pending)} trials, at most {concurrency} at a time, {len(services)} retriever actor(s); "
             f"Tune results in {sweep_abs / 'ray' / f'run-{run_id}'}")
        trainable = tune.with_resources(tune.with_parameters(run_trial, trials=payloads, ctx=ctx),
                                        {"CPU": 0, _driver_node_resource(): 0.001})
        names = _TrialNames({t.index: t.name for t in pending})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.index for t in pending])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True,
                                        trial_name_creator=names, trial_dirname_creator=names),
            run_config=tune.RunConfig(name=f"run-{run_id}", storage_path=str(sweep_abs / "ray"),
                                      failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                      verbose=verbose, callbacks=[_progress_callback(names.names, Path(ctx["trials_dir"]))]),
        )
        if console.ACTIVE is not None:
            console.ACTIVE.start_status(len(pending))
        with _environ_for_tune(verbose):
            grid = tuner.fit()
        tune_errors = {}
        for result in grid:
            index = (result.config or {}).get("trial")
            if index is not None and result.error is not None:
                tune_errors[index] = f"{type(result.error).__name__}: {_first_line(result.error)}"
        pool_stats = ray.get(pool.stats.remote())
        retriever_stats = _service_stats(services, warmups)
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    finally:
        if console.ACTIVE is not None:
            console.ACTIVE.close_status()  # the actors' last lines, then the status line goes
        _cleanup(pool, services, [handle for _, handle, _, _ in first] + ([board] if board is not None else []))
        if started_here:
            ray.shutdown()
        if reaper is not None:
            reaper.done()
        quiet_ray.__exit__(None, None, None)
    outcome = _record_outcomes(pending, base, run_id, tune_errors)
    loads_per_actor = {name: w["loads"] for name, w in pool_stats["workers"].items()}
    model_loads: dict[str, int] = {}
    for loads in loads_per_actor.values():
        for model, n in loads.items():
            model_loads[model] = model_loads.get(model, 0) + n
    return {
        "dashboard_url": dashboard, "ray_connect_seconds": connect_seconds, "nodes": nodes,
        "max_concurrent_trials": concurrency,
        "trials_outcome": outcome["counts"], "trial_nodes": outcome["nodes"], "trial_actors": outcome["actors"],
        "model_loads": model_loads, "model_loads_per_actor": loads_per_actor, "workers": pool_stats["workers"],
        "indexes_built": sum(1 for s in retriever_stats if s.get("index_built_now")),
        "indexes_loaded": sum(1 for s in retriever_stats if s.get("index_built_now") is False),
        "retriever_actors": retriever_stats,
    }


#: Credentials Ray Tune copies from the driver's environment into every trial's runtime_env, which
#: Ray's runtime_env agent then writes, in plain text, to runtime_env_agent.log. Trial functions
#: need none of them (they only talk to the actors, which have their own environment).
TUNE_PROPAGATED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


@contextmanager
def _environ_for_tune(verbose: int) -> Iterator[None]:
    """The driver's environment while Tune runs, restored after: cloud credentials removed (they
    would reach the trials' runtime_env and so Ray's logs); at verbose=0 Tune's newer console
    output, which prints a banner even then, switched off (the sweep prints its own lines)."""
    from slm_ray.environ import environment

    changes: dict[str, str | None] = {name: None for name in TUNE_PROPAGATED_SECRETS}
    if not verbose:
        changes["RAY_AIR_NEW_OUTPUT"] = "0"
    with environment(changes):
        yield


#: Below this many CPUs a local Ray starts without its dashboard unless asked: on 2 cores the
#: dashboard's processes slowed generation by about 8% (bench/bench_sweep.py).
DASHBOARD_MIN_CPUS = 4


def dashboard_by_default(cpus: int | None = None) -> bool:
    """Whether a local Ray starts its dashboard when the command line does not say."""
    return (cpus if cpus is not None else os.cpu_count() or 1) >= DASHBOARD_MIN_CPUS


def _connect(address: str | None, dashboard: bool = True) -> tuple[bool, str | None]:
    """Connect to ``address`` or start a local Ray; (started here, dashboard URL)."""
    import ray

    if ray.is_initialized():
        try:
            from ray._private.worker import get_dashboard_url

            url = get_dashboard_url()
        except Exception:  # a private helper: the URL is a nicety
            url = None
        return False, _dashboard(url)
    # Worker output stays in Ray's log files: what the user should see comes through the board
    # (slm_ray.logs), and the workers draw no progress bars into those files.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                              "runtime_env": {"env_vars": dict(QUIET_WORKERS)}}
    if address:
        kwargs["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):  # set for drivers of `ray job submit`: connect there
        # "local": a Ray of this sweep's own. Without it ray.init joins the last cluster `ray start`
        # recorded on this machine, or hangs on that record when the cluster is gone.
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = dashboard
        # Ray turns token authentication on for a new local cluster and warns that it did: keep it
        # on, without the warning (RAY_AUTH_MODE=disabled still turns it off).
        logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    try:
        context = ray.init(**kwargs)
    except ConnectionError as exc:
        raise SweepError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
    return True, _dashboard(getattr(context, "dashboard_url", None))


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
#: The environment of every Ray worker of a sweep: no tqdm bars (they went to the console, one
#: line per refresh, before log_to_driver was turned off; now they would fill the log files).
QUIET_WORKERS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _dashboard(url: str | None) -> str | None:
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def _driver_node_resource() -> str:
    """Pin trial functions to the driver's node (they write the trial records on its disk)."""
    import ray

    resource = f"node:{ray.util.get_node_ip_address()}"
    return resource if resource in ray.cluster_resources() else "node:__internal_head__"


def _resolve_shapes(plan: SweepPlan, pending: list[Trial], local: bool) -> dict[str, tuple[float, float]]:
    """(cpus, gpus) of every pending trial; gpus auto = model.num_gpus where the cluster has GPUs."""
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    shapes = {}
    for trial in pending:
        gpus = plan.resources.gpus
        if gpus is None:
            gpus = float(trial.config.model.num_gpus) if has_gpu else 0.0
        shape = (plan.resources.cpus, gpus)
        if not any(n.get("CPU", 0) >= shape[0] and n.get("GPU", 0) >= shape[1] for n in nodes):
            message = (f"trial {trial.name} needs cpus={shape[0]:g}, gpus={shape[1]:g} but no node of the "
                       f"cluster has that much ({_describe_nodes(nodes)})")
            if local:
                raise SweepError(message + "; lower resources in the sweep file")
            log.warning("%s; waiting for the autoscaler to add one", message)
        shapes[trial.name] = shape
    return shapes


def _describe_nodes(nodes: list[dict[str, float]]) -> str:
    return "; ".join(f"node {i + 1}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes))


def _capacity(shapes: set[tuple[float, float]], retriever_actors: int, retriever_shape: tuple[float, float]) -> int:
    """How many workers of the largest trial shape fit on the nodes once the retriever actors are placed."""
    import ray

    cpus = max(s[0] for s in shapes)
    gpus = max(s[1] for s in shapes)
    free = [[n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)]
            for n in ray.nodes() if n.get("Alive")]
    for _ in range(retriever_actors):  # each on the node with the most room, as a scheduler would
        fitting = [f for f in free if f[0] >= retriever_shape[0] and f[1] >= retriever_shape[1]]
        if fitting:
            best = max(fitting, key=lambda f: (f[1], f[0]))
            best[0] -= retriever_shape[0]
            best[1] -= retriever_shape[1]
    total = 0
    for node_cpus, node_gpus in free:
        fits = []
        if cpus > 0:
            fits.append(int(node_cpus // cpus))
        if gpus > 0:
            fits.append(int(node_gpus // gpus))
        total += min(fits) if fits else max(1, int(node_cpus))
    return total


def _runtime_env(worker_env: dict[str, str] | None) -> dict[str, Any]:
    return {"runtime_env": {"env_vars": dict(worker_env)}} if worker_env else {}


def _service_stats(services: dict[str, Any], warmups: list[Any]) -> list[dict[str, Any]]:
    import ray

    stats = []
    for key, handle in services.items():
        try:
            stats.append({"key": key, **ray.get(handle.stats.remote(), timeout=60)})
        except Exception as exc:  # the actor died (e.g. a bad corpus): keep the reason
            stats.append({"key": key, "error": _first_line(exc)})
    for ref in warmups:
        try:
            ray.get(ref, timeout=1)
        except Exception as exc:
            log.warning("a retriever actor failed to build its index: %s", _first_line(exc))
    return stats


def _cleanup(pool: Any, services: dict[str, Any], workers: list[Any]) -> None:
    """Retire every worker, the pool and the retriever actors (also after an error or Ctrl-C)."""
    import ray

    for handle in workers:
        try:
            ray.kill(handle)
        except Exception:
            pass

    if pool is not None:
        try:
            ray.get(pool.shutdown.remote(), timeout=30)
        except Exception:
            pass
        ray.kill(pool)
    for handle in services.values():
        try:
            ray.kill(handle)
        except Exception:
            pass


def _record_outcomes(pending: list[Trial], base: Path, run_id: str, tune_errors: dict[int, str]) -> dict[str, Any]:
    """Read this run's trial records; write one for a trial Tune failed before it could."""
    counts = {"ok": 0, "failed": 0, "not_run": 0}
    nodes, actors = {}, {}
    for trial in pending:
        path = trial_dir(trial, base) / TRIAL_RECORD
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("run_id") != run_id:
            if trial.index in tune_errors:
                record = {"run_id": run_id, "trial": trial.name, "status": "failed", "error": tune_errors[trial.index]}
                atomic_write_json(path, record)
            else:
                counts["not_run"] += 1
                continue
        counts["ok" if record.get("status") == "ok" else "failed"] += 1
        if record.get("node_id"):
            nodes[trial.name] = record["node_id"]
        if record.get("actor"):
            actors[trial.name] = record["actor"]
    return {"counts": counts, "nodes": nodes, "actors": actors}


def _write_stats(sweep_abs: Path, name: str, record: dict[str, Any]) -> None:
    """sweep_stats.json: this run in full, every run's counts, and totals over runs."""
    path = sweep_abs / "sweep_stats.json"
    try:
        previous = json.loads(path.read_text())
        runs = list(previous.get("runs", []))
    except (OSError, ValueError):
        runs = []
    brief = {k: record.get(k) for k in ("run_id", "started", "finished", "wall_seconds", "trials", "trials_outcome",
                                        "model_loads", "indexes_built")}
    runs.append(brief)
    totals_loads: dict[str, int] = {}
    for run in runs:
        for model, n in (run.get("model_loads") or {}).items():
            totals_loads[model] = totals_loads.get(model, 0) + n
    atomic_write_json(path, {
        "sweep": name, "host": socket.gethostname(), "updated": now_iso(), "last_run": record,
        "totals": {"runs": len(runs), "model_loads": totals_loads,
                   "indexes_built": sum(run.get("indexes_built") or 0 for run in runs)},
        "runs": runs,
    })
