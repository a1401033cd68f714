"""A node lost in the middle of a sweep: Tune retries only the trials that ran there, on the node
that is left; finished trials stay finished; the driver writes the summary. A real two-node Ray
cluster of this test's own (``ray.cluster_utils.Cluster``), since one of its nodes is removed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_to_break() -> Any:
    import ray
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        try:
            yield cluster, worker
        finally:
            ray.shutdown()
            cluster.shutdown()


def _remove_node_when_busy(cluster: Any, worker: Any, trials: Path, lost: dict[str, Any]) -> None:
    """Remove ``worker`` once a trial running there has answered a few questions; note what ran there."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        running_there = {}
        for folder in trials.glob("*"):
            try:
                record = json.loads((folder / "trial.json").read_text())
                answered = len((folder / "predictions.jsonl").read_text().splitlines())
            except (OSError, ValueError):
                continue
            if record.get("node_id") == worker.node_id and record.get("status") == "running":
                running_there[folder.name] = answered
        if running_there and max(running_there.values()) >= 3:
            lost["trials"] = set(running_there)
            lost["finished"] = {p.parent.name: p.stat().st_mtime_ns for p in trials.glob("*/results.json")}
            cluster.remove_node(worker)
            return
        time.sleep(0.05)


def test_a_lost_node_retries_only_its_trials_on_the_node_left(cluster_to_break, sweep_env: Path,
                                                              sweep_cache_dir: Path) -> None:
    from slm_ray.sweeps.engine import run_sweep
    from slm_ray.sweeps.spec import load_sweep

    cluster, worker = cluster_to_break
    limit = 24
    sweep = sweep_env / "lost.yaml"
    sweep.write_text(f"""
name: lost
overrides: [dataset.limit={limit}, tracker=none, "experiment.cache_dir={sweep_cache_dir}", model.batch_size=1,
            experiment.bootstrap_resamples=50]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, oracle_context]
  model.max_new_tokens: [16, 24]
resources: {{cpus: 1, gpus: 0}}
max_concurrent_trials: 4
""")
    plan = load_sweep(sweep)
    trials = sweep_env / "outputs" / "sweeps" / "lost" / "trials"
    lost: dict[str, Any] = {}
    watcher = threading.Thread(target=_remove_node_when_busy, args=(cluster, worker, trials, lost), daemon=True)
    watcher.start()
    record = run_sweep(plan)
    watcher.join(timeout=5)
    assert lost.get("trials"), "the worker node was never removed"

    assert record["trials_outcome"] == {"ok": len(plan.trials), "failed": 0, "not_run": 0}
    head = cluster.head_node.node_id
    retried = set()
    for trial in plan.trials:
        trial_record = json.loads((trials / trial.name / "trial.json").read_text())
        if trial_record["process_losses"]:  # lost with the node, and only then; finished on the head node
            retried.add(trial.name)
            assert all(f"on node {worker.node_id[:12]}" in loss for loss in trial_record["process_losses"])
            assert trial_record["node_id"] == head and trial_record["attempts"] == 2, trial_record
        ids = [json.loads(line)["id"] for line in (trials / trial.name / "predictions.jsonl").read_text().splitlines()]
        assert len(ids) == limit and len(set(ids)) == limit, trial.name  # each example once, none lost
    # every trial running there was retried (one that started there as the node went may be too)
    assert lost["trials"] <= retried, (lost["trials"], retried)
    for name, mtime in lost["finished"].items():  # finished before the loss: not run again
        assert (trials / name / "results.json").stat().st_mtime_ns == mtime
    summary = json.loads((sweep_env / "outputs" / "sweeps" / "lost" / "summary.json").read_text())
    assert summary["counts"] == {"ok": len(plan.trials)}
