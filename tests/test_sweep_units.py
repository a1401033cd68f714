"""Pieces of the sweep engine without Ray: the trial actor's model cache, the sorting of worker output, the shared retriever's
memoised disk cache, resume states, and the summary / report rebuilt from trial folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slm_ray.retrieval.service import RetrieverClient, RetrieverService, service_key
from slm_ray.sweeps.spec import SweepError, load_sweep


class FakeGenerator:
    """A FAKE generator (no model): counts what the trial actor's cache does with it."""

    def __init__(self, name: str):
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_trial_actor_keeps_its_model_and_swaps_it_only_for_another(make_config, monkeypatch) -> None:
    import slm_ray.experiment as experiment
    from slm_ray.sweeps import trainable

    built: list[FakeGenerator] = []
    monkeypatch.setattr(experiment, "build_generator", lambda cfg: built.append(FakeGenerator(cfg.model.name)) or built[-1])
    monkeypatch.setattr(trainable, "_HELD", {"key": None, "name": None, "generator": None, "loads": {},
                                             "load_seconds": {}})
    llama, qwen = make_config("model=tiny_llama"), make_config("model=tiny_qwen3")
    hot = make_config("model=tiny_llama", "model.temperature=0.7")  # decoding differs: the same load
    plan = [(llama, "A"), (hot, "A"), (qwen, "B"), (qwen, "B"), (llama, "A")]
    got = [trainable.held_generator(cfg, key) for cfg, key in plan]
    assert got[0] is got[1] and got[2] is got[3] and got[4] is not got[0]
    assert [g.name for g in built] == ["tiny_llama", "tiny_qwen3", "tiny_llama"]
    assert built[0].closed and built[1].closed and not built[2].closed  # a swap closes the one it replaces
    assert trainable._HELD["loads"] == {"tiny_llama": 2, "tiny_qwen3": 1}


def test_worker_output_is_sorted_into_console_steps_and_log_lines() -> None:
    from slm_ray.logs import LineSorter

    shown: list[str] = []
    kept: list[str] = []
    sorter = LineSorter(show=shown.append, keep=kept.append)
    sorter({"pid": 41, "actor_name": "", "task_name": "ImplicitFunc.train", "lines": [
        "[slm_ray step generator-41] loaded tiny_llama on cpu in 1.2s",
        "[slm_ray info generator-41] tiny_llama-nq-no_context: 4 examples, 0 already done",
        "[slm_ray warning retriever-bm25-x] dropped 1 damaged cached answer(s)",
        "\x1b[33mLoading weights: 100%\x1b[0m", ""]})
    sorter({"pid": "raylet", "lines": ["\x1b[2m[2026-12-04 18:00:00] raylet spilled objects\x1b[0m"]})
    assert shown == ["  [generator-41] loaded tiny_llama on cpu in 1.2s",
                     "  [retriever-bm25-x] dropped 1 damaged cached answer(s)"]
    assert kept == ["  [generator-41] tiny_llama-nq-no_context: 4 examples, 0 already done",
                    "(ImplicitFunc.train pid=41) Loading weights: 100%",
                    "(pid=raylet) [2026-12-04 18:00:00] raylet spilled objects"]


def _service(tmp_path: Path, corpus: Path, cache: Path) -> RetrieverService:
    from slm_ray.composition import compose_config

    cfg = compose_config(["corpus=file", f"corpus.path={corpus}", "retriever=bm25", f"experiment.cache_dir={cache}"])
    return RetrieverService(service_key(cfg), cfg.retriever.model_dump(by_alias=True), cfg.corpus.model_dump(),
                            str(cache), str(tmp_path), memory_interval_s=0.05)


def test_the_reaper_stops_a_dead_drivers_processes_and_their_children_even_one_that_ignores_sigterm() -> None:
    """What the watcher of a sweep's local Ray does once the driver is gone (``reaper.reap``), on real
    processes: a parent that ignores SIGTERM (SIGKILL after the grace period), and the child it
    started after the watcher's last snapshot."""
    import subprocess
    import sys

    import psutil

    from slm_ray.sweeps.reaper import reap

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, subprocess, sys, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                                 "print('up', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "up\n"
    parent = psutil.Process(stubborn.pid)
    child = parent.children()[0]  # not in the snapshot below: found at reap time
    assert reap({parent.pid: parent}, grace_s=1.0) == 2
    assert parent.returncode == -9  # psutil's wait reaped it: SIGTERM was ignored, SIGKILL ended it
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_retriever_service_memoises_and_caches_on_disk(tmp_path: Path, small_corpus: Path) -> None:
    cache = tmp_path / "cache"
    queries = ["who wrote the song", "where is the capital", "who wrote the song"]
    first = _service(tmp_path, small_corpus, cache)
    first.warmup()
    hits = first.retrieve(queries, 3)
    assert [len(h) for h in hits] == [3, 3, 3] and hits[0] == hits[2]
    assert first.queries_searched == 2 and first.queries_from_cache == 1
    first.retrieve(queries[:1], 3)
    assert first.queries_searched == 2
    stats = first.stats()
    assert stats["index_built_now"] is True and stats["memory"]["peak_rss_mb"] > 0
    assert stats["index_key"].startswith("bm25-") and stats["n_passages"] == 80
    first.monitor.stop()

    cache_file = next((cache / "retrievals").glob("*-k3.jsonl"))
    with open(cache_file, "a") as handle:
        handle.write('{"q": "torn')                      # a crash mid-append
    second = _service(tmp_path, small_corpus, cache)
    again = second.retrieve(queries, 3)
    assert again == hits
    assert second.queries_searched == 0 and second._retriever is None   # no index needed, no search
    assert cache_file.read_text().endswith("\n") and len(cache_file.read_text().splitlines()) == 2
    assert second.retrieve(["a new question"], 3) and second.queries_searched == 1
    assert second.describe()["index_built_now"] is False
    second.monitor.stop()


def test_retriever_client_pickles_without_a_handle() -> None:
    import pickle

    client = RetrieverClient("retriever-x", "ns")
    client._handle = object()
    copy = pickle.loads(pickle.dumps(client))
    assert copy.actor_name == "retriever-x" and copy.namespace == "ns" and copy._handle is None


def _run_tiny(trial: Any, cache: Path) -> dict[str, Any]:
    from slm_ray.experiment import run_experiment

    return run_experiment(trial.config, show_progress=False)


def test_resume_states_report_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          sweep_cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from slm_ray.report import main as report_main
    from slm_ray.sweeps.engine import trial_state
    from slm_ray.reporting.summary import write_summary
    from slm_ray.store.io import atomic_write_json

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""
name: rep
overrides: [dataset.limit=4, tracker=none, "experiment.cache_dir={sweep_cache_dir}", experiment.bootstrap_resamples=50]
grid:
  model: [tiny_llama]
  experiment_mode: [no_context, oracle_context, retriever_context]
""")
    plan = load_sweep(sweep)
    rc, oc, nc = plan.trials  # longest first
    assert {trial_state(t, tmp_path) for t in plan.trials} == {"new"}
    _run_tiny(nc, sweep_cache_dir)
    _run_tiny(rc, sweep_cache_dir)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "rep"
    atomic_write_json(sweep_dir / "sweep.json", plan.to_json())
    atomic_write_json(sweep_dir / "trials" / oc.name / "trial.json", {"status": "failed", "error": "DataError: boom"})
    assert trial_state(nc, tmp_path) == "complete" and trial_state(oc, tmp_path) == "new"

    # the same trial name with another config is refused before anything runs
    changed = load_sweep(sweep, ["dataset.limit=3"])
    with pytest.raises(SweepError, match="holds answers for other inputs: dataset.limit: 4 -> 3"):
        trial_state(changed.trials[0], tmp_path)

    summary = write_summary(sweep_dir)
    assert summary["counts"] == {"ok": 2, "failed": 1}
    assert [r["trial"] for r in summary["rows"]] == [nc.name, oc.name, rc.name]  # reading order, not run order
    rows = {r["trial"]: r for r in summary["rows"]}
    assert rows[oc.name]["status"] == "failed" and rows[oc.name]["error"] == "DataError: boom"
    assert rows[rc.name]["k"] == 5 and rows[rc.name]["retrieval_recall"] is not None
    assert rows[nc.name]["token_recall_ci_low"] is not None and rows[nc.name]["n_examples"] == 4
    assert len(summary["plots"]) == 3

    for name in ("summary.csv", "summary.json", "summary.md", "token_recall.png", "memory.png", "throughput.png"):
        (sweep_dir / name).unlink()
    assert report_main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "| tiny_llama-nq-no_context |" in out and "failed: DataError: boom" in out
    csv_lines = (sweep_dir / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("trial,model,dataset,mode,retriever,k,n_examples,token_recall")
    assert len(csv_lines) == 4
    assert json.loads((sweep_dir / "summary.json").read_text())["counts"] == {"ok": 2, "failed": 1}
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "sweep folder not found" in capsys.readouterr().err

    # --verify: a failed trial is reported; a trial listed as ok whose folder is gone fails it
    assert report_main(["--verify", str(sweep_dir)]) == 1
    err = capsys.readouterr().err
    assert f"MISMATCH {oc.name}: the trial failed: DataError: boom" in err
    (sweep_dir / "trials" / oc.name / "trial.json").unlink()
    write_summary(sweep_dir)
    import shutil

    shutil.rmtree(sweep_dir / "trials" / rc.name)
    assert report_main(["--verify", str(sweep_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{rc.name}: listed in summary.json as ok, but its folder is missing" in err
    assert f"{oc.name}: the trial is not finished (pending)" in err

    # without summary.json, the plan in sweep.json says which trials must be there
    for name in ("summary.json", "summary.csv"):
        (sweep_dir / name).unlink()
    assert report_main(["--verify", str(sweep_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{rc.name}: planned in sweep.json but not run, or its folder is missing" in err

    # a run with other settings wrote into a trial folder: results exist, yet they are not the plan's
    other = load_sweep(sweep, ["model.max_new_tokens=3", "experiment.replace=true"]).trials[2]
    _run_tiny(other, sweep_cache_dir)
    assert report_main(["--verify", str(sweep_dir)]) == 1
    assert f"{nc.name}: its answers were made with other settings than the sweep's plan" in capsys.readouterr().err

    # the latest attempt failed: the summary says failed even though results.json is there
    atomic_write_json(sweep_dir / "trials" / nc.name / "trial.json", {"status": "failed", "error": "InputsChanged: x"})
    rows = {r["trial"]: r for r in write_summary(sweep_dir)["rows"]}
    assert rows[nc.name]["status"] == "failed"


def test_an_edited_cached_retrieval_is_dropped_and_searched_again(tmp_path: Path, small_corpus: Path) -> None:
    cache = tmp_path / "cache"
    first = _service(tmp_path, small_corpus, cache)
    hits = first.retrieve(["who wrote the song", "where is the capital"], 2)
    first.monitor.stop()
    cache_file = next((cache / "retrievals").glob("*-k2.jsonl"))
    lines = cache_file.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["hits"] = [[39, 9.0], [38, 8.0]]  # other passages, the line still valid JSON
    cache_file.write_text("\n".join([json.dumps(edited), *lines[1:]]) + "\n")
    second = _service(tmp_path, small_corpus, cache)
    assert second.retrieve(["who wrote the song", "where is the capital"], 2) == hits
    assert second.queries_searched == 1 and second.queries_from_cache == 1
    second.monitor.stop()


# --- report: a running sweep, a trial folder deleted by hand (issue 19, class 5) ----------------------------


@pytest.fixture
def two_trial_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep_cache_dir: Path) -> tuple[Path, Any]:
    """A sweep of two tiny trials, both run (directly, without Ray) and summarised once."""
    from slm_ray.store.io import atomic_write_json
    from slm_ray.reporting.summary import write_summary

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""
name: two
overrides: [dataset.limit=2, tracker=none, "experiment.cache_dir={sweep_cache_dir}", experiment.bootstrap_resamples=20]
grid:
  model: [tiny_llama]
  model.temperature: [0.0, 0.5]
""")
    plan = load_sweep(sweep)
    for trial in plan.trials:
        _run_tiny(trial, sweep_cache_dir)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "two"
    atomic_write_json(sweep_dir / "sweep.json", plan.to_json())
    write_summary(sweep_dir)
    return sweep_dir, plan


def test_report_refuses_a_sweep_that_is_running_and_writes_nothing(two_trial_sweep, capsys) -> None:
    """Issue 19: report wrote a summary into a running sweep (the driver holds the sweep folder's lock)."""
    from slm_ray.report import main as report_main
    from slm_ray.store.run_folder import FolderLock

    sweep_dir, _ = two_trial_sweep
    before = {p.name: p.read_bytes() for p in sweep_dir.iterdir() if p.is_file()}
    lock = FolderLock(sweep_dir, "sweep").acquire()
    try:
        (sweep_dir / "summary.md").unlink()
        assert report_main([str(sweep_dir)]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "is a sweep that is running (pid" in lines[0] and "partial" in lines[0], err
        assert not (sweep_dir / "summary.md").exists()
    finally:
        lock.release()
    assert report_main([str(sweep_dir)]) == 0  # once it has ended, the summary is written
    assert (sweep_dir / "summary.md").is_file() and (sweep_dir / "summary.json").read_bytes() == before["summary.json"]


def test_a_trial_folder_deleted_by_hand_is_missing_not_pending(two_trial_sweep, capsys) -> None:
    """Issue 19: the summary called a deleted trial "pending", as if the sweep had not reached it."""
    import shutil

    from slm_ray.report import main as report_main
    from slm_ray.reporting.summary import write_summary

    sweep_dir, plan = two_trial_sweep
    gone, kept = plan.trials
    shutil.rmtree(sweep_dir / "trials" / gone.name)
    assert report_main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert f"| {gone.name} |" in out and "missing: its folder" in out and "pending" not in out
    rows = {r["trial"]: r for r in json.loads((sweep_dir / "summary.json").read_text())["trials"]}
    assert rows[gone.name]["status"] == "missing" and rows[kept.name]["status"] == "ok"
    assert json.loads((sweep_dir / "summary.json").read_text())["counts"] == {"ok": 1, "missing": 1}
    assert write_summary(sweep_dir)["counts"] == {"ok": 1, "missing": 1}  # still missing at the next report
    assert report_main(["--verify", str(sweep_dir)]) == 1
    assert f"MISMATCH {gone.name}: its folder" in capsys.readouterr().err
    # a trial the sweep never reached has no folder either, and stays pending
    (sweep_dir / "summary.json").unlink()
    assert {r["trial"]: r["status"] for r in write_summary(sweep_dir)["rows"]}[gone.name] == "pending"
