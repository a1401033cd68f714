"""The Tune callback of a sweep: trial records on the driver's disk and console lines, from Tune's
events and the results the trials report (``trainable.py``)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from slm_ray.errors import describe_error
from slm_ray.store.sweep_folder import SweepFolder, now_iso
from slm_ray.sweeps import display
from slm_ray.sweeps.trainable import MIRROR_FILES, MIRROR_LINES


#: Seconds between two progress lines of one trial (where there is no live status line).
PROGRESS_EVERY_S = 15.0


class StopOnWriteFault(Stopper):
    """Ends the whole sweep when a trial could not write (a full or read-only disk): every other trial
    would fail the same way. What was answered stays in the trials' folders for the rerun."""

    def __init__(self) -> None:
        self.hit = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        driver_fault = display.ACTIVE is not None and display.ACTIVE.write_fault is not None
        self.hit = self.hit or bool(result.get("write_fault")) or driver_fault
        return self.hit

    def stop_all(self) -> bool:
        return self.hit


class TrialEvents(Callback):
    """Each trial's record on the driver's disk, and its lines on the console, from Tune's events."""

    def __init__(self, folder: SweepFolder, names: dict[int, str], run_id: str,
                 retriever_actors: dict[str, str | None]) -> None:
        self.folder, self.names, self.run_id, self.retriever_actors = folder, names, run_id, retriever_actors
        self.done = 0
        self.started: set[str] = set()
        self.records: dict[str, dict[str, Any]] = {}
        self.known_ids: dict[str, set[str] | None] = {}
        self.last_line: dict[str, float] = {}

    def _name(self, trial: Any) -> str:
        return self.names[(trial.config or {})["trial"]]

    def _record(self, name: str, **values: Any) -> dict[str, Any]:
        record = self.records.setdefault(name, {
            "run_id": self.run_id, "trial": name, "retriever_actor": self.retriever_actors.get(name),
            "started": now_iso(), "attempts": 1, "process_losses": []})
        record.update(values)
        try:
            self.folder.write_trial_record(name, record)
        except OSError as exc:
            display.note_write_fault(self.folder.path, exc)
        return record

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        name = self._name(trial)
        lines, files = result.pop(MIRROR_LINES, None), result.pop(MIRROR_FILES, None)  # not for Tune's loggers
        if lines:
            self.known_ids[name] = self.folder.mirror_lines(name, lines, self.known_ids.get(name))
        if files:
            self.folder.mirror_files(name, files)
        status = result.get("status")
        if status == "started":
            actor = f"generator-{result.get('pid')}"
            self._record(name, status="running", actor=actor, node_id=result.get("node_id"),
                         pid=result.get("pid"), actor_id=result.get("actor_id"),
                         placement_group_id=result.get("placement_group_id"),
                         resources=result.get("trial_resources"), mirrored=result.get("mirrored"))
            if name not in self.started and display.ACTIVE is not None:
                display.ACTIVE.trial_started()
            self.started.add(name)
            display.echo(f"  started   {name} on {actor}")
        elif status == "running":
            self._progress(name, result)
        elif status in ("ok", "failed"):
            keep = ("model_loaded_now", "model_load_seconds", "model_loads", "seconds", "worker_span", "write_fault")
            self._record(name, status=status, error=result.get("error") or None, finished=now_iso(),
                         **{k: result.get(k) for k in keep if k in result})
            self._finished(name, status == "ok", result)

    def _progress(self, name: str, result: dict) -> None:
        if time.monotonic() - self.last_line.get(name, 0.0) < PROGRESS_EVERY_S:
            return
        self.last_line[name] = time.monotonic()
        speed = float(result.get("examples_per_second", 0.0) or 0.0)
        text = (f"  progress  {name}: {int(result.get('examples_done', 0))} examples, {speed:.2f} ex/s, "
                f"running token recall {result.get('running_token_recall', 0.0):.3f}, "
                f"peak RSS {result.get('peak_rss_mb', 0.0):.0f} MB")
        if display.ACTIVE is not None:
            display.ACTIVE.progress(text, name, speed)
        else:
            display.echo(text)

    def _finished(self, name: str, ok: bool, result: dict) -> None:
        self.done += 1
        if display.ACTIVE is not None:
            if name not in self.started:
                display.ACTIVE.trial_started()
            display.ACTIVE.trial_finished(name, ok)
        record = self.records.get(name, {})
        where = f" on {record.get('actor')}" if record.get("actor") else ""
        if ok:
            speed = result.get("examples_per_second")
            display.echo(f"  [{self.done}/{len(self.names)}] ok     {name}: token recall "
                 f"{result.get('token_recall', float('nan')):.3f}{where}, "
                 + (f"{speed:.2f} ex/s" if speed else "speed unknown"))
        else:
            display.echo(f"  [{self.done}/{len(self.names)}] FAILED {name}: {record.get('error')}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = self._name(trial)
        record = self.records.get(name, {})
        lost = _loss(record, trial)
        self._record(name, status="running", attempts=record.get("attempts", 1) + 1,
                     process_losses=[*record.get("process_losses", []), lost])
        display.echo(f"  retrying  {name}: {lost}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = self._name(trial)
        record = self.records.get(name, {})
        lost = _loss(record, trial)
        self._record(name, status="failed", error=lost, finished=now_iso(),
                     process_losses=[*record.get("process_losses", []), lost])
        self._finished(name, False, {})


def _loss(record: dict[str, Any], trial: Any) -> str:
    """What was lost, where, and why, in one line."""
    node = f" on node {record['node_id'][:12]}" if record.get("node_id") else ""
    return f"{record.get('actor', 'its process')}{node} was lost: {_error_of(trial)}"


def _error_of(trial: Any) -> str:
    """What Tune recorded for a trial whose process was lost, in one line (from the driver's copy of
    the error: Tune syncs it to the trial's storage later)."""
    from ray import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    try:
        with open(path, "rb") as handle:  # type: ignore[arg-type]
            return describe_error(cloudpickle.load(handle))
    except Exception:  # no such file (another Tune), or an error that does not unpickle here
        return "no error recorded"
