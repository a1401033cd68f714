"""A sweep killed in the middle (driver, Ray and workers at once) and run again: it completes, with
every prediction present exactly once. Runs the real command line with its own local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import psutil

LIMIT = 120


def _predictions(folder: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(folder.glob("*/predictions.jsonl")):
        ids = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                ids.append(json.loads(line)["id"])
            except ValueError:
                ids.append("<torn line>")
        found[path.parent.name] = ids
    return found


def _wait_until_quiet(folder: Path, quiet_s: float = 4.0, limit_s: float = 60.0) -> None:
    """Workers of a killed Ray exit once they lose their raylet; wait until no file changes."""
    started = time.monotonic()
    last = None
    since = time.monotonic()
    while time.monotonic() - started < limit_s:
        state = {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
        if state != last:
            last, since = state, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


@pytest.mark.ray
def test_killed_sweep_resumes_without_losing_or_repeating_predictions(sweep_env: Path, sweep_cache_dir: Path) -> None:
    sweep = sweep_env / "resume.yaml"
    sweep.write_text(f"""
name: resume
overrides: [dataset.limit={LIMIT}, tracker=none, "experiment.cache_dir={sweep_cache_dir}", model.batch_size=2,
            experiment.bootstrap_resamples=50]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, oracle_context]
resources: {{cpus: 1}}
max_concurrent_trials: 2
""")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "slm_ray.sweep", str(sweep)]
    trials = sweep_env / "outputs" / "sweeps" / "resume" / "trials"
    log = open(sweep_env / "first.log", "w")
    first = subprocess.Popen(command, cwd=sweep_env, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if sum(len(ids) for ids in _predictions(trials).values()) >= 10:
                break
            time.sleep(0.2)
        assert first.poll() is None, (sweep_env / "first.log").read_text()[-3000:]
    finally:
        # the driver, the local Ray it started and its workers (which run in sessions of their own)
        family = psutil.Process(first.pid).children(recursive=True)
        os.killpg(first.pid, signal.SIGKILL)
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        first.wait()
        log.close()
    _wait_until_quiet(trials)
    partial = _predictions(trials)
    assert partial and sum(len(ids) for ids in partial.values()) < 4 * LIMIT

    second = subprocess.run(command, cwd=sweep_env, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    done = _predictions(trials)
    assert len(done) == 4
    for name, ids in done.items():
        assert len(ids) == LIMIT and len(set(ids)) == LIMIT, name
        kept = [i for i in partial.get(name, []) if i != "<torn line>"]
        assert ids[: len(kept)] == kept, name  # nothing already computed was lost or recomputed
        results = json.loads((trials / name / "results.json").read_text())
        assert results["n_examples"] == LIMIT
    stats = json.loads((sweep_env / "outputs" / "sweeps" / "resume" / "sweep_stats.json").read_text())
    assert stats["last_run"]["trials"]["resumed"] >= 1
    assert stats["last_run"]["trials_outcome"] == {"ok": stats["last_run"]["trials"]["ran"], "failed": 0, "not_run": 0}
    assert len(stats["runs"]) == 1  # the killed run never got to write its stats
    summary = (sweep_env / "outputs" / "sweeps" / "resume" / "summary.md").read_text()
    assert summary.count("| ok |") == 4
