"""The sweep engine on a real (simulated) two-node Ray cluster with logical GPUs.

Trials of tiny models ask for half a GPU each; they run on CPU (the tiny configs set device: cpu).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from slm_ray.sweeps.engine import run_sweep
from slm_ray.sweeps.spec import load_sweep



def _nq_lines(n: int) -> list[str]:
    import itertools

    from slm_ray.data.builtin import NQ_OPEN_ORACLE
    from slm_ray.data.files import iter_jsonl

    return [json.dumps(r) for r in itertools.islice(iter_jsonl(NQ_OPEN_ORACLE), n)]


def _write_sweep(folder: Path, cache: Path, corpus: Path, bad: Path) -> Path:
    sweep = folder / "cluster.yaml"
    sweep.write_text(f"""
name: cluster
overrides: [dataset.limit=6, tracker=none, "experiment.cache_dir={cache}", corpus=file, "corpus.path={corpus}"]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, oracle_context, retriever_context]
  retriever: [bm25, dense]
  dataset.path: [builtin, "{bad}"]
exclude:
  - {{dataset.path: ["{bad}"], model: [tiny_qwen3]}}
  - {{dataset.path: ["{bad}"], experiment_mode: [oracle_context, retriever_context]}}
resources: {{cpus: 1, gpus: 0.5}}
max_concurrent_trials: 2
""")
    return sweep


def _state_of(address: str, actor_ids: set[str], group_ids: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What Ray's state API shows of the given actors and placement groups, looked up by id (Ray keeps
    dead actors and removed placement groups in its tables while the cluster lives)."""
    from ray.util.state import list_actors, list_placement_groups

    actors = {actor_id: list_actors(address, filters=[("actor_id", "=", actor_id)], detail=True)
              for actor_id in actor_ids}
    groups = {group_id: list_placement_groups(address, filters=[("placement_group_id", "=", group_id)], detail=True)
              for group_id in group_ids}
    assert all(len(rows) == 1 for rows in [*actors.values(), *groups.values()]), (actors, groups)
    return {k: rows[0] for k, rows in actors.items()}, {k: rows[0] for k, rows in groups.items()}


def _mtimes(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def test_sweep_on_two_node_cluster(two_node_cluster, sweep_env: Path, small_corpus: Path) -> None:
    bad = sweep_env / "nq_bad.jsonl"
    lines = _nq_lines(6)
    bad.write_text("\n".join(lines[:2] + ['{"question": "broken', *lines[2:]]) + "\n")
    # a cache of its own: the counts of searches and index builds below are this sweep's alone,
    # whichever tests ran before
    sweep = _write_sweep(sweep_env, sweep_env / "cache", small_corpus, bad)
    plan = load_sweep(sweep)
    assert len(plan.trials) == 9
    bad_trial = next(t.name for t in plan.trials if str(bad) in t.config.dataset.path)

    started = time.perf_counter()
    started_ms = time.time() * 1000
    run_sweep(plan, address=two_node_cluster.address)
    first_wall = time.perf_counter() - started
    sweep_dir = sweep_env / "outputs" / "sweeps" / "cluster"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    status = {row["trial"]: row["status"] for row in summary["trials"]}
    assert status.pop(bad_trial) == "failed"
    assert set(status.values()) == {"ok"}, status
    failed_row = next(r for r in summary["trials"] if r["trial"] == bad_trial)
    assert "DataError" in failed_row["error"] and "malformed JSON line" in failed_row["error"]

    stats = json.loads((sweep_dir / "sweep_stats.json").read_text())["last_run"]
    # one retriever actor per retriever configuration (bm25, dense over the same corpus)
    actors = stats["retriever_actors"]
    assert sorted(a["type"] for a in actors) == ["bm25", "dense"]
    assert stats["indexes_built"] + stats["indexes_loaded"] == 2
    # queries of the same dataset are searched once per retriever, whichever model asks
    assert all(a["queries_searched"] == 6 and a["queries_from_cache"] == 6 for a in actors), actors
    # every worker loaded each model at most once
    per_actor = stats["model_loads_per_actor"]
    assert per_actor and all(n == 1 for loads in per_actor.values() for n in loads.values()), per_actor
    assert stats["model_loads"]["tiny_llama"] <= 2 and stats["model_loads"]["tiny_qwen3"] <= 2
    # the trials ran on both nodes
    assert len(set(stats["trial_nodes"].values())) == 2, stats["trial_nodes"]
    assert len(stats["nodes"]) == 2
    for name in status:
        record_file = json.loads((sweep_dir / "trials" / name / "trial.json").read_text())
        assert record_file["node_id"] in stats["nodes"]
    # the indexes were built before the trials by prepare tasks holding a whole node's CPUs; the
    # retriever actors only loaded them
    from ray.util.state import list_tasks

    assert all(a["index_built_now"] is False for a in actors), actors
    builds = [t for t in list_tasks(two_node_cluster.address, detail=True, limit=10_000)  # this sweep's, not an earlier test's
              if t.func_or_class_name == "build_index" and (t.creation_time_ms or 0) >= started_ms]
    assert len(builds) == 2 and all(t.required_resources.get("CPU") == 2.0 for t in builds), builds
    # each trial ran in one of Tune's trial actors, holding the sweep's resources: as the trial's
    # runtime context told it (trial.json), and as Ray's state API shows those actors and their
    # placement groups
    records = {name: json.loads((sweep_dir / "trials" / name / "trial.json").read_text()) for name in status}
    assert all(r["resources"] == {"CPU": 1.0, "GPU": 0.5} for r in records.values()), records
    actor_state, group_state = _state_of(two_node_cluster.address, {r["actor_id"] for r in records.values()},
                                         {r["placement_group_id"] for r in records.values()})
    for name, record in records.items():
        actor = actor_state[record["actor_id"]]
        assert actor.placement_group_id == record["placement_group_id"] and actor.pid == record["pid"], (name, actor)
        bundles = [b["unit_resources"] for b in group_state[record["placement_group_id"]].bundles]
        assert bundles == [{"CPU": 1.0, "GPU": 0.5}], (name, bundles)
    # trials of the same model reuse an actor: fewer actors than trials
    assert len({r["actor_id"] for r in records.values()}) < len(records)
    # the summary and its plots are there
    for name in ("summary.csv", "summary.md", "token_recall.png", "memory.png", "throughput.png"):
        assert (sweep_dir / name).is_file()
    # Tune's own results stay, with the final metrics in each trial's progress.csv
    tune_runs = list((sweep_dir / "ray").glob("run-*"))
    assert len(tune_runs) == 1
    ok_trial = next(name for name in status)
    with open(tune_runs[0] / ok_trial / "progress.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["status"] == "started" and rows[-1]["status"] == "ok"
    assert float(rows[-1]["token_recall"]) == next(r for r in summary["trials"] if r["trial"] == ok_trial)["token_recall"]
    # retriever memory of the shared actors is reported per trial
    rc_rows = [r for r in summary["trials"] if r["mode"] == "retriever_context"]
    assert rc_rows and all(r["retriever_peak_rss_mb"] for r in rc_rows)

    # fix the data file: the rerun runs only the failed trial and leaves the others untouched
    bad.write_text("\n".join(lines) + "\n")
    before = {k: v for k, v in _mtimes(sweep_dir / "trials").items() if bad_trial not in k}
    second = run_sweep(load_sweep(sweep), address=two_node_cluster.address)
    assert second["trials"]["ran"] == 1 and second["trials"]["already_complete"] == 8
    assert second["trials_outcome"] == {"ok": 1, "failed": 0, "not_run": 0}
    after = {k: v for k, v in _mtimes(sweep_dir / "trials").items() if bad_trial not in k}
    assert before == after

    # a finished sweep: nothing runs, no Ray actor, no model load
    before = _mtimes(sweep_dir / "trials")
    third = run_sweep(load_sweep(sweep), address=two_node_cluster.address)
    assert third["trials"]["ran"] == 0 and third["model_loads"] == {}
    assert _mtimes(sweep_dir / "trials") == before
    print(f"first run {first_wall:.1f}s")


def test_workers_without_the_driver_disk_mirror_their_files(two_node_cluster, sweep_env: Path,
                                                             sweep_cache_dir: Path) -> None:
    """Workers whose node has its own disk (SLM_RAY_NODE_ROOT) stream predictions back; resuming
    there starts from the driver's copy."""
    node_root = sweep_env / "node-disk"
    sweep = sweep_env / "mirror.yaml"
    sweep.write_text(f"""
name: mirror
overrides: [dataset.limit=6, tracker=none, "experiment.cache_dir={sweep_cache_dir}", model=tiny_llama]
grid:
  experiment_mode: [no_context, retriever_context]
resources: {{cpus: 1, gpus: 0.5}}
""")
    plan = load_sweep(sweep)
    env = {"SLM_RAY_NODE_ROOT": str(node_root)}
    record = run_sweep(plan, address=two_node_cluster.address, worker_env=env)
    assert record["trials_outcome"] == {"ok": 2, "failed": 0, "not_run": 0}
    head = sweep_env / "outputs" / "sweeps" / "mirror" / "trials"
    node = node_root / "outputs" / "sweeps" / "mirror" / "trials"
    for trial in plan.trials:
        for name in ("results.json", "predictions.jsonl", "config.json", "memory_usage.json"):
            assert (head / trial.name / name).read_text() == (node / trial.name / name).read_text()
        assert json.loads((head / trial.name / "trial.json").read_text())["mirrored"] is True

    # interrupted trial: the driver has 3 predictions, the node lost its copy
    trial = plan.trials[0].name
    lines = (head / trial / "predictions.jsonl").read_text().splitlines()
    (head / trial / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (head / trial / "results.json").unlink()
    import shutil

    shutil.rmtree(node / trial)
    again = run_sweep(load_sweep(sweep), address=two_node_cluster.address, worker_env=env)
    assert again["trials"] == {"total": 2, "already_complete": 1, "resumed": 1, "ran": 1}
    ids = [json.loads(line)["id"] for line in (head / trial / "predictions.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in lines) and len(ids) == 6
    assert [json.loads(line)["id"] for line in lines[:3]] == ids[:3]
    run_log = (node / trial / "run.log").read_text()
    assert "6 examples, 3 already done" in run_log


def test_clearml_one_offline_task_per_trial(two_node_cluster, sweep_env: Path, sweep_cache_dir: Path) -> None:
    sweep = sweep_env / "tracked.yaml"
    sweep.write_text(f"""
name: tracked
overrides: [dataset.limit=4, tracker=clearml, "experiment.cache_dir={sweep_cache_dir}"]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, oracle_context]
resources: {{cpus: 1, gpus: 0.5}}
""")
    clearml_cache = sweep_env / "clearml"
    env = {"CLEARML_CACHE_DIR": str(clearml_cache), "CLEARML_CONFIG_FILE": str(sweep_env / "no-clearml.conf")}
    record = run_sweep(load_sweep(sweep), address=two_node_cluster.address, worker_env=env)
    assert record["trials_outcome"]["ok"] == 4
    tasks = [json.loads(p.read_text()) for p in clearml_cache.glob("offline/offline-*/task.json")]
    assert len(tasks) == 4
    assert {t["project_name"] for t in tasks} == {"slm-ray/tracked"}
    assert {t["name"] for t in tasks} == {"tiny_llama-nq-no_context", "tiny_llama-nq-oracle_context",
                                          "tiny_qwen3-nq-no_context", "tiny_qwen3-nq-oracle_context"}
    for task in tasks:
        model, mode = task["name"].split("-nq-")
        assert {f"model:{model}", f"mode:{mode}", "dataset:nq", "sweep:tracked"} <= set(task["tags"])
    # Tune's own results stay next to the trials
    assert list((sweep_env / "outputs" / "sweeps" / "tracked" / "ray").glob("run-*/experiment_state-*.json"))
