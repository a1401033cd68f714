"""The sweep folder, ``<experiment.output_dir>/sweeps/<name>/``: every file name in it, and how each
is read and written. The run folder of one trial is ``run_folder.RunFolder``; this is the layer above.

    sweep.json          the plan (trials, grid, resources), rewritten by every run of the sweep
    sweep_stats.json    this run in full, every earlier run's counts, totals over runs
    sweep.log           everything the console printed, the actors' records, Ray's and Tune's logs
    .run_id             the running sweep's id: a node that reads the same id shares the driver's disk
    summary.csv|json|md and plots (reporting/summary.py)
    trials/<trial>/     one run folder per trial, plus trial.json (where it ran, or why it failed)
    ray/run-<id>/       Tune's own results of each run
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slm_ray.store.io import atomic_write_json, atomic_write_text, read_json

PLAN = "sweep.json"
STATS = "sweep_stats.json"
LOG = "sweep.log"
RUN_MARKER = ".run_id"
TRIALS = "trials"
TUNE = "ray"
TRIAL_RECORD = "trial.json"
SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD = "summary.csv", "summary.json", "summary.md"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_sweep_folder(path: Path) -> bool:
    """A sweep's folder holds its plan or its trials."""
    return (path / PLAN).is_file() or (path / TRIALS).is_dir()


class SweepFolder:
    """Reads and writes the files of one sweep folder (the driver's copy)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def trials_dir(self) -> Path:
        return self.path / TRIALS

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    def tune_dir(self) -> Path:
        return self.path / TUNE

    def trial_dir(self, trial: str) -> Path:
        return self.trials_dir / trial

    # -- the plan and the run marker --------------------------------------------------------------

    def read_plan(self) -> dict[str, Any]:
        return read_json(self.path / PLAN) or {}

    def write_plan(self, plan: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / PLAN, {**plan, "updated": now_iso()})

    def mark_run(self, run_id: str) -> None:
        atomic_write_text(self.path / RUN_MARKER, run_id + "\n")

    def shows_run(self, run_id: str) -> bool:
        """Whether this process sees the driver's folder (same machine or shared storage)."""
        try:
            return (self.path / RUN_MARKER).read_text().strip() == run_id
        except OSError:
            return False

    # -- trial records -----------------------------------------------------------------------------

    def read_trial_record(self, trial: str) -> dict[str, Any]:
        record = read_json(self.trial_dir(trial) / TRIAL_RECORD)
        return record if isinstance(record, dict) else {}

    def write_trial_record(self, trial: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.trial_dir(trial) / TRIAL_RECORD, record)

    def adopt_completed_elsewhere(self, trial: str) -> None:
        """A trial whose last sweep attempt failed but whose folder now holds results for the sweep's
        very inputs (completed with ``slm-ray run``, as ``--cfg`` prints it): record it as ok."""
        record = self.read_trial_record(trial)
        if record.get("status") == "failed":
            self.write_trial_record(trial, {**record, "status": "ok", "error": None,
                                            "note": f"completed outside the sweep after a failed attempt "
                                                    f"({record.get('error')})"})

    def run_outcomes(self, trials: list[str], run_id: str) -> dict[str, Any]:
        """What run ``run_id`` did to ``trials``, from their records: counts, where each ran, the model
        loads of every trial actor (its last record has its count so far), the first write fault."""
        counts = {"ok": 0, "failed": 0, "not_run": 0}
        nodes, actors, loads_per_actor = {}, {}, {}
        write_fault: str | None = None
        for trial in trials:
            record = self.read_trial_record(trial)
            if record.get("run_id") != run_id or record.get("status") not in ("ok", "failed"):
                counts["not_run"] += 1
                continue
            counts[record["status"]] += 1
            write_fault = write_fault or (record.get("error") if record.get("write_fault") else None)
            if record.get("node_id"):
                nodes[trial] = record["node_id"]
            if record.get("actor"):
                actors[trial] = record["actor"]
                loads = record.get("model_loads") or {}
                if sum(loads.values()) >= sum(loads_per_actor.get(record["actor"], {}).values()):
                    loads_per_actor[record["actor"]] = loads
        model_loads: dict[str, int] = {}
        for loads in loads_per_actor.values():
            for model, n in loads.items():
                model_loads[model] = model_loads.get(model, 0) + n
        return {"counts": counts, "nodes": nodes, "actors": actors, "loads_per_actor": loads_per_actor,
                "model_loads": model_loads, "write_fault": write_fault}

    # -- copies of trials that ran on a node with a disk of its own ---------------------------------

    def seed_files(self, trial: str) -> dict[str, str]:
        """The driver's copy of an interrupted trial, for a node that has its own disk."""
        from slm_ray.store.run_folder import CONFIG, INPUTS, PREDICTIONS, SEGMENTS

        folder = self.trial_dir(trial)
        return {name: (folder / name).read_text(encoding="utf-8") for name in (CONFIG, INPUTS, SEGMENTS, PREDICTIONS)
                if (folder / name).is_file()}

    def mirror_lines(self, trial: str, lines: list[str], known: set[str] | None) -> set[str]:
        """Append a remote trial's new prediction lines (each example once); the ids now held."""
        from slm_ray.store.run_folder import PREDICTIONS, append_prediction_lines

        return append_prediction_lines(self.trial_dir(trial) / PREDICTIONS, lines, known)

    def mirror_files(self, trial: str, files: dict[str, str]) -> None:
        for name, text in files.items():
            atomic_write_text(self.trial_dir(trial) / name, text)

    # -- statistics over runs ------------------------------------------------------------------------

    def append_stats(self, sweep_name: str, record: dict[str, Any]) -> None:
        """sweep_stats.json: this run in full, every run's counts, and totals over runs."""
        previous = read_json(self.path / STATS)
        runs = list(previous.get("runs", [])) if isinstance(previous, dict) else []
        runs.append({k: record.get(k) for k in ("run_id", "started", "finished", "wall_seconds", "trials",
                                                "trials_outcome", "model_loads", "indexes_built")})
        loads: dict[str, int] = {}
        for run in runs:
            for model, n in (run.get("model_loads") or {}).items():
                loads[model] = loads.get(model, 0) + n
        atomic_write_json(self.path / STATS, {
            "sweep": sweep_name, "host": socket.gethostname(), "updated": now_iso(), "last_run": record,
            "totals": {"runs": len(runs), "model_loads": loads,
                       "indexes_built": sum(run.get("indexes_built") or 0 for run in runs)},
            "runs": runs,
        })

