"""Run a sweep plan on Ray: prepare what the trials share, then Ray Tune runs the trials.

1. Plan: trials whose ``results.json`` is there (for the same inputs) are skipped; interrupted
   ones continue from their predictions (``run_experiment`` resumes).
2. Ray: a local Ray of the sweep's own (``reaper`` ends it if the driver is killed), or ``--address``.
3. Prepare (``prepare.py``): Ray tasks build every missing index and model copy, before any trial.
4. One retriever actor per retriever configuration loads its index and serves every trial.
5. Tune runs one trial per pending trial. The trial actor is the generator (``trainable.py``): Tune
   reuses it for the next trial of the same resources (``reuse_actors``), holds its resources (the
   sweep's ``resources``, per trial), and retries it when its process is lost (``FailureConfig``).
   ``display.trial_events``, a Tune callback, writes the trial records and the console lines.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from slm_ray.cli import raise_interrupt
from slm_ray.errors import describe_error
from slm_ray.store.sweep_folder import SweepFolder, now_iso
from slm_ray.sweeps import display
from slm_ray.sweeps.spec import SweepError, SweepPlan, Trial
from slm_ray.reporting.summary import write_summary

log = logging.getLogger("slm_ray.sweep")
#: Seconds to wait for worker output in flight before handing an existing Ray's output back to Ray.
LAST_OUTPUT_S = 1.0


# --- resume bookkeeping (no Ray) --------------------------------------------------------------------

def trial_dir(trial: Trial, base: Path) -> Path:
    """Where the trial's files are, seen from ``base`` (the driver's working directory)."""
    return (base / trial.config.experiment.output_dir / trial.name).resolve()


def trial_state(trial: Trial, base: Path, datasets: dict[str, Any] | None = None,
                checked: dict[str, dict[str, Any]] | None = None) -> str:
    """``complete``, ``partial`` or ``new`` (``slm_ray.inputs.folder_state``); a folder holding answers
    for other inputs is refused before anything runs, unless ``experiment.replace=true``. ``checked``
    receives the inputs checked for each trial: its worker refuses data changed since."""
    from slm_ray.inputs import folder_state
    from slm_ray.store.run_folder import FolderUnusable, InputsChanged

    try:
        state, inputs, unchecked = folder_state(trial.config, trial_dir(trial, base), datasets)
    except FolderUnusable as exc:
        raise SweepError(f"trial {trial.name}: {exc}") from None
    except InputsChanged as exc:
        raise SweepError(f"trial {trial.name}: {exc} (a new sweep folder: --name NAME)") from None
    if unchecked:
        log.warning("trial %s: %s", trial.name, unchecked)
    if checked is not None and inputs is not None:
        checked[trial.name] = inputs
    return state


# --- the driver ------------------------------------------------------------------------------------------

def run_sweep(plan: SweepPlan, *, address: str | None = None, verbose: int = 0,
              worker_env: dict[str, str] | None = None, echo: Callable[[str], None] = display.echo,
              dashboard: bool | None = None) -> dict[str, Any]:
    """Run what is left of ``plan``; write sweep_stats.json and the summary. Returns this run's stats.

    ``address``: an existing Ray cluster (else a local one is started). ``dashboard``: whether that
    local Ray starts its dashboard; None decides by the machine (``dashboard_by_default``).
    ``worker_env``: extra environment variables for the trial, retriever and prepare processes.
    """
    from slm_ray.store.run_folder import OUTPUT_SETTING, PREDICTIONS, RESULTS, FolderLock

    base = Path.cwd()
    sweep_abs = (base / plan.sweep_dir).resolve()
    for name in (PREDICTIONS, RESULTS):
        if (sweep_abs / name).exists():
            raise SweepError(f"{sweep_abs} holds a single run's {name}, not a sweep: pass --name <another name>")
    from slm_ray.errors import writes_to
    from slm_ray.redaction import config_secrets, override_secrets

    secrets = override_secrets([*plan.overrides, *plan.cli_overrides]) | config_secrets(
        [t.config.model_dump(by_alias=True) for t in plan.trials[:1]])
    lock = FolderLock(sweep_abs, "sweep").acquire()  # one driver per sweep folder, for its whole run
    try:
        with display.active(display.SweepConsole(secrets=secrets)), writes_to(sweep_abs, OUTPUT_SETTING):
            return _run_sweep_locked(plan, base, SweepFolder(sweep_abs), address, verbose, worker_env, echo,
                                     dashboard)
    finally:
        lock.release(tidy=True)  # removes the folder only if this sweep created it and wrote nothing


def _run_sweep_locked(plan: SweepPlan, base: Path, folder: SweepFolder, address: str | None, verbose: int,
                      worker_env: dict[str, str] | None, echo: Callable[[str], None],
                      dashboard: bool | None) -> dict[str, Any]:
    datasets: dict[str, Any] = {}
    checked: dict[str, dict[str, Any]] = {}
    states = {t.name: trial_state(t, base, datasets, checked) for t in plan.trials}
    del datasets
    for trial in plan.trials:
        if states[trial.name] == "complete":
            folder.adopt_completed_elsewhere(trial.name)
    pending = [t for t in plan.trials if states[t.name] != "complete"]
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    record: dict[str, Any] = {
        "run_id": run_id, "started": now_iso(), "address": address or "local",
        "trials": {"total": len(plan.trials), "already_complete": len(plan.trials) - len(pending),
                   "resumed": sum(1 for t in pending if states[t.name] == "partial"), "ran": len(pending)},
    }
    started = time.perf_counter()
    complete = len(plan.trials) - len(pending)
    if not pending:
        _open_folder(folder, plan)
        echo(f"sweep {plan.name}: all {len(plan.trials)} trials are complete; nothing to run")
        record.update({"model_loads": {}, "model_loads_per_actor": {}, "indexes_built": 0, "retriever_actors": []})
    else:
        echo(f"sweep {plan.name}: {len(pending)} of {len(plan.trials)} trials to run"
             + (f" ({complete} already complete)" if complete else ""))
        record.update(_run_on_ray(plan, pending, run_id, base, folder, address, verbose, worker_env, echo,
                                  dashboard, checked))
    record["finished"] = now_iso()
    record["wall_seconds"] = round(time.perf_counter() - started, 3)
    folder.append_stats(plan.name, record)
    summary = write_summary(folder.path)
    record["summary"] = summary["counts"]
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n) or "no trials"
    echo(f"trials: {counts}")
    echo(f"summary: {folder.path / 'summary.md'}")
    return record


def _open_folder(folder: SweepFolder, plan: SweepPlan) -> None:
    """Write the plan and start sweep.log, once nothing can refuse the sweep any more."""
    folder.write_plan(plan.to_json())
    if display.ACTIVE is not None:
        display.ACTIVE.attach_file(folder.log_path)


def _run_on_ray(plan: SweepPlan, pending: list[Trial], run_id: str, base: Path, folder: SweepFolder,
                address: str | None, verbose: int, worker_env: dict[str, str] | None,
                echo: Callable[[str], None], dashboard_wanted: bool | None,
                checked: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import ray

    from slm_ray.sweeps.reaper import Reaper

    connect_started = time.perf_counter()
    chosen = dashboard_wanted is not None
    if dashboard_wanted is None:
        dashboard_wanted = dashboard_by_default()
    started_here, dashboard, session_dir = connect_ray(address, dashboard_wanted)
    connect_seconds = round(time.perf_counter() - connect_started, 3)
    local = started_here and not address and not os.environ.get("RAY_ADDRESS")
    reaper = Reaper.start() if local else None  # this Ray's processes go when the driver is killed
    if dashboard:
        echo(f"Ray dashboard: {dashboard}")
    elif local and not dashboard_wanted:
        echo("Ray dashboard: off (--no-dashboard)" if chosen else
             f"Ray dashboard: off on this {os.cpu_count()}-CPU machine, where it would slow the trials "
             "(--dashboard turns it on)")
    elif started_here:
        echo("Ray dashboard: not available (pip install 'ray[default]')")
    else:
        echo("Ray dashboard: none on the Ray this sweep joined")
    namespace = f"slm_ray-{plan.name}-{run_id}"
    services: dict[str, Any] = {}
    routing = _worker_output_to_console()
    routing.__enter__()
    try:
        with display.ray_logs_to_sweep_log():
            shapes = _trial_shapes(plan, pending, local)
            _open_folder(folder, plan)
            folder.mark_run(run_id)
            from slm_ray.sweeps.prepare import prepare

            prepared = prepare(pending, str(base), worker_env, echo)
            failed = prepared.pop("failed")
            runnable = [t for t in pending if t.retriever_key not in failed]
            for trial in pending:
                if trial.retriever_key in failed:
                    folder.write_trial_record(trial.name, {"run_id": run_id, "trial": trial.name, "status": "failed",
                                                           "error": failed[trial.retriever_key],
                                                           "finished": now_iso()})
            services = _start_retrievers(runnable, plan, namespace, str(base), worker_env)
            echo(f"running {len(runnable)} trials"
                 + (f", at most {plan.max_concurrent_trials} at a time" if plan.max_concurrent_trials else "")
                 + f", {len(services)} retriever actor(s); Tune results in {folder.tune_dir() / f'run-{run_id}'}")
            if runnable:
                _tune(plan, runnable, run_id, base, folder, namespace, shapes, worker_env, verbose, checked)
            retriever_stats = _service_stats(services)
            nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    finally:
        if display.ACTIVE is not None:
            display.ACTIVE.close_status()
        for handle in services.values():
            ray.kill(handle)
        if started_here:
            ray.shutdown()
        else:
            time.sleep(LAST_OUTPUT_S)  # the actors' last lines, still on their way through Ray's log path
        routing.__exit__(None, None, None)
        if reaper is not None:
            reaper.done()
    outcome = folder.run_outcomes([t.name for t in pending], run_id)
    fault = display.ACTIVE.write_fault if display.ACTIVE is not None else None
    fault = fault or (outcome["write_fault"] or "").split(": ", 1)[-1]
    if fault:  # a full or read-only disk: the sweep stops with its one line (exit 2)
        from slm_ray.errors import FolderUnusable

        raise FolderUnusable(fault)
    return {
        "dashboard_url": dashboard, "ray_session_dir": session_dir, "ray_connect_seconds": connect_seconds,
        "nodes": nodes,
        "max_concurrent_trials": plan.max_concurrent_trials or "auto",
        "trials_outcome": outcome["counts"], "trial_nodes": outcome["nodes"], "trial_actors": outcome["actors"],
        "model_loads": outcome["model_loads"], "model_loads_per_actor": outcome["loads_per_actor"],
        "indexes_built": prepared["indexes_built"], "indexes_loaded": prepared["indexes_cached"],
        "retriever_actors": retriever_stats,
    }


def _tune(plan: SweepPlan, trials: list[Trial], run_id: str, base: Path, folder: SweepFolder, namespace: str,
          shapes: dict[str, tuple[float, float]], worker_env: dict[str, str] | None, verbose: int,
          checked: dict[str, dict[str, Any]]) -> None:
    """Run ``trials`` with Ray Tune, one trial actor (a generator) per running trial."""
    from ray import tune

    from slm_ray.sweeps.events import StopOnWriteFault, TrialEvents
    from slm_ray.sweeps.trainable import run_trial

    payloads: dict[int, dict[str, Any]] = {}
    seeds: dict[str, dict[str, str]] = {}
    for trial in trials:
        key = trial.retriever_key
        payloads[trial.index] = {
            "name": trial.name, "config": trial.config.model_dump(by_alias=True), "model_key": trial.model_key,
            "retriever_actor": f"retriever-{key}" if key else None, "namespace": namespace,
            "sweep_dir": str(plan.sweep_dir), "run_id": run_id, "driver_cwd": str(base),
            "inputs": checked.get(trial.name), "env": dict(worker_env or {})}
        seed = folder.seed_files(trial.name)
        if seed:
            seeds[trial.name] = seed
    names = {t.index: t.name for t in trials}
    shape_of = {t.index: shapes[t.name] for t in trials}

    def trial_resources(config: dict[str, Any]) -> Any:
        cpus, gpus = shape_of[config["trial"]]
        return tune.PlacementGroupFactory([{"CPU": cpus, "GPU": gpus}])

    def trial_name(trial: Any) -> str:
        return names[trial.config["trial"]]

    def run_one(config: dict[str, Any], payloads: dict[int, dict[str, Any]], seeds: dict[str, dict[str, str]]) -> None:
        run_trial(payloads[config["trial"]], seeds)

    trainable = tune.with_resources(tune.with_parameters(run_one, payloads=payloads, seeds=seeds), trial_resources)
    retriever_actors = {t.name: (f"retriever-{t.retriever_key}" if t.retriever_key else None) for t in trials}
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.index for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent_trials, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=f"run-{run_id}", storage_path=str(folder.tune_dir()),
                                  failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                  stop=StopOnWriteFault(),
                                  verbose=verbose,
                                  callbacks=[TrialEvents(folder, names, run_id, retriever_actors)]),
    )
    if display.ACTIVE is not None:
        display.ACTIVE.start_status(len(trials))
    with _environ_for_tune(verbose):
        tuner.fit()


def _trial_shapes(plan: SweepPlan, pending: list[Trial], local: bool) -> dict[str, tuple[float, float]]:
    """(cpus, gpus) of every pending trial; gpus auto = model.num_gpus where the cluster has GPUs.
    A trial that no node could hold is refused on a local Ray (an autoscaler may add one elsewhere)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    shapes = {}
    for trial in pending:
        gpus = plan.resources.gpus
        if gpus is None:
            gpus = float(trial.config.model.num_gpus) if has_gpu else 0.0
        shape = (plan.resources.cpus, gpus)
        if not any(n.get("CPU", 0) >= shape[0] and n.get("GPU", 0) >= shape[1] for n in nodes):
            message = (f"trial {trial.name} needs cpus={shape[0]:g}, gpus={shape[1]:g} but no node of the "
                       "cluster has that much (" + "; ".join(f"node {i + 1}: {n.get('CPU', 0):g} CPU, "
                                                             f"{n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes)) + ")")
            if local:
                raise SweepError(message + "; lower resources in the sweep file")
            log.warning("%s; waiting for the autoscaler to add one", message)
        shapes[trial.name] = shape
    return shapes


def _start_retrievers(trials: list[Trial], plan: SweepPlan, namespace: str, driver_cwd: str,
                      worker_env: dict[str, str] | None) -> dict[str, Any]:
    """One retriever actor per retriever configuration; each loads its (prepared) index now."""
    import ray

    from slm_ray.retrieval.service import RETRIEVER_RESTARTS, RetrieverService

    services: dict[str, Any] = {}
    rr = plan.retriever_resources
    runtime = {"runtime_env": {"env_vars": dict(worker_env)}} if worker_env else {}
    for trial in trials:
        key = trial.retriever_key
        if key is None or key in services:
            continue
        cfg = trial.config
        services[key] = ray.remote(RetrieverService).options(
            name=f"retriever-{key}", namespace=namespace, num_cpus=rr.cpus, num_gpus=rr.gpus or 0,
            **RETRIEVER_RESTARTS, **runtime,
        ).remote(key, cfg.retriever.model_dump(by_alias=True), cfg.corpus.model_dump(), cfg.experiment.cache_dir,
                 driver_cwd, int(rr.cpus) or os.cpu_count(), cfg.experiment.memory_interval_s,
                 cfg.experiment.index_store)
        services[key].warmup.remote()
    return services


def _service_stats(services: dict[str, Any]) -> list[dict[str, Any]]:
    import ray

    stats = []
    for key, handle in services.items():
        try:
            stats.append({"key": key, **ray.get(handle.stats.remote(), timeout=60)})
        except Exception as exc:  # the actor died (e.g. a bad corpus): keep the reason
            stats.append({"key": key, "error": describe_error(exc)})
    return stats


def _worker_output_to_console() -> Any:
    """Ray's worker output through ``slm_ray.logs.LineSorter`` while the sweep runs: steps and warnings
    on the console, everything in sweep.log."""
    from slm_ray.logs import LineSorter, worker_output_to

    def keep(text: str) -> None:
        if display.ACTIVE is not None:
            display.ACTIVE.log_only(text)

    return worker_output_to(LineSorter(show=display.echo, keep=keep))


TUNE_PROPAGATED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


@contextmanager
def _environ_for_tune(verbose: int) -> Iterator[None]:
    """The driver's environment while Tune runs, restored after: cloud credentials removed (they
    would reach the trials' runtime_env and so Ray's logs); at verbose=0 Tune's newer console
    output, which prints a banner even then, switched off (the sweep prints its own lines)."""
    from slm_ray.environ import environment

    changes: dict[str, str | None] = {name: None for name in TUNE_PROPAGATED_SECRETS}
    changes["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C is KeyboardInterrupt, as everywhere in slm_ray
    # One trial waiting for resources at a time: trials then start in the plan's order (grouped by
    # model), so a reused trial actor never goes back to a model it has put down. Tune's default
    # (200 waiting placement groups) lets Ray place them in any order. An autoscaling cluster that
    # should see more demand at once can set it higher.
    changes["TUNE_MAX_PENDING_TRIALS_PG"] = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG", "1")
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


def connect_ray(address: str | None, dashboard: bool = True) -> tuple[bool, str | None, str | None]:
    """Connect to ``address`` or start a local Ray; (started here, dashboard URL, the folder of this
    Ray session's logs on the driver's node, where ray.init says)."""
    import ray

    if ray.is_initialized():
        try:
            from ray._private.worker import get_dashboard_url

            url = get_dashboard_url()
        except Exception:  # a private helper: the URL is a nicety
            url = None
        return False, _dashboard(url), None
    # Worker output reaches the driver through Ray's log path, sorted by slm_ray.logs.LineSorter;
    # the workers draw no progress bars.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING,
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
        raise SweepError(f"cannot connect to the Ray cluster at {address}: {describe_error(exc)}") from None
    finally:
        signal.signal(signal.SIGTERM, raise_interrupt)  # ray.init's own exits mid-cleanup, with a stack dump
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    return True, _dashboard(getattr(context, "dashboard_url", None)), session_dir


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
#: The environment of every Ray worker of a sweep: no tqdm bars (they went to the console, one
#: line per refresh, before log_to_driver was turned off; now they would fill the log files).
QUIET_WORKERS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _dashboard(url: str | None) -> str | None:
    if not url:
        return None
    return url if "://" in url else f"http://{url}"
