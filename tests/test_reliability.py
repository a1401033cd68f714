"""Faults and checks of a sweep, with real Ray and real files (docs/RELIABILITY.md lists them):
``report --verify`` re-scoring every trial, a trial's process killed mid-trial (Tune retries it), a retriever actor
killed under concurrent callers, a 24-trial sweep, and the shared retriever under concurrent load."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from slm_ray.experiment import PREDICTIONS, output_dir, run_experiment
from slm_ray.report import main as report_main

REPO = Path(__file__).resolve().parents[1]


def _verify(folder: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = report_main(["--verify", str(folder)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --- 1. report --verify -----------------------------------------------------------------------------


def test_verify_recomputes_every_metric_and_fails_loudly(make_config, small_corpus: Path, capsys) -> None:
    cfg = make_config("model=tiny_qwen3", "dataset.limit=8", "experiment_mode=retriever_context", "retriever=bm25",
                      "retriever.k=2", "corpus=file", f"corpus.path={small_corpus}")
    run_experiment(cfg, show_progress=False)
    out = output_dir(cfg)
    done = subprocess.run([sys.executable, "-m", "slm_ray.report", "--verify", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified 1 trials" in done.stdout

    results_path, predictions_path = out / "results.json", out / PREDICTIONS
    results_text, predictions_text = results_path.read_text(), predictions_path.read_text()

    # a tampered metric in results.json
    results = json.loads(results_text)
    results["metrics"]["token_recall"]["mean"] += 0.01
    results_path.write_text(json.dumps(results))
    code, text = _verify(out, capsys)
    assert code == 1 and "token_recall.mean" in text and out.name in text
    results_path.write_text(results_text)

    # a tampered confidence interval, and a tampered retrieval recall
    results = json.loads(results_text)
    results["metrics"]["retrieval_recall"]["ci_high"] = 1.5
    results_path.write_text(json.dumps(results))
    code, text = _verify(out, capsys)
    assert code == 1 and "retrieval_recall.ci_high" in text and "1.5" in text
    results_path.write_text(results_text)
    assert _verify(out, capsys)[0] == 0

    # a duplicated prediction line
    lines = predictions_text.splitlines()
    predictions_path.write_text("\n".join([*lines, lines[3]]) + "\n")
    code, text = _verify(out, capsys)
    assert code == 1 and f"{PREDICTIONS}:{len(lines) + 1}: example" in text and "again (first on line 4)" in text

    # a missing prediction line
    predictions_path.write_text("\n".join(lines[1:]) + "\n")
    code, text = _verify(out, capsys)
    assert code == 1 and "no prediction" in text and "n_examples" in text

    # a changed prediction (the stored per-example metrics no longer match it)
    row = json.loads(lines[0])
    row["prediction"] = row["answers"][0]  # a correct answer now: its stored metrics are stale
    predictions_path.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    code, text = _verify(out, capsys)
    assert code == 1 and "predictions.jsonl says" in text
    predictions_path.write_text(predictions_text)
    assert _verify(out, capsys)[0] == 0


# --- 2. a trial's process killed in the middle of the trial --------------------------------------------


def _kill_trial_process_when(folder: Path, lines: int, killed: list[int], limit_s: float = 90.0) -> None:
    """kill -9 the process of the trial running in ``folder`` once it has ``lines`` predictions."""
    import os
    import signal

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            count = sum(1 for line in (folder / PREDICTIONS).read_text().splitlines() if line.strip())
            pid = json.loads((folder / "trial.json").read_text()).get("pid")
        except (OSError, ValueError):
            count, pid = 0, None
        if count >= lines and pid:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_trial_process_killed_mid_trial_is_retried_by_tune_and_resumes(local_ray, sweep_env: Path,
                                                                       sweep_cache_dir: Path, capsys) -> None:
    from slm_ray.sweeps.engine import run_sweep
    from slm_ray.sweeps.spec import load_sweep

    limit = 40
    sweep = sweep_env / "kill.yaml"
    sweep.write_text(f"""
name: kill
overrides: [dataset.limit={limit}, tracker=none, "experiment.cache_dir={sweep_cache_dir}", model=tiny_llama,
            model.batch_size=1, experiment.bootstrap_resamples=200]
grid:
  experiment_mode: [oracle_context]
resources: {{cpus: 1}}
""")
    plan = load_sweep(sweep)
    trial = plan.trials[0]
    folder = sweep_env / "outputs" / "sweeps" / "kill" / "trials" / trial.name
    killed: list[int] = []
    killer = threading.Thread(target=_kill_trial_process_when, args=(folder, 4, killed), daemon=True)
    killer.start()
    record = run_sweep(plan, dashboard=False)
    killer.join(timeout=5)
    assert killed, "the trial's process was never killed"
    assert record["trials_outcome"] == {"ok": 1, "failed": 0, "not_run": 0}
    trial_record = json.loads((folder / "trial.json").read_text())
    assert trial_record["status"] == "ok" and trial_record["attempts"] == 2, trial_record
    assert len(trial_record["process_losses"]) == 1 and f"generator-{killed[0]}" in trial_record["process_losses"][0]
    assert trial_record["pid"] != killed[0]  # Tune's retry ran in a new trial actor
    out = capsys.readouterr().out
    assert f"retrying  {trial.name}: generator-{killed[0]} on node" in out and "was lost: " in out, out

    rows = [json.loads(line) for line in (folder / PREDICTIONS).read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == limit and len(set(ids)) == limit  # every example exactly once: none lost
    assert "already done" in (folder / "run.log").read_text()

    # the same trial, uninterrupted (greedy decoding is deterministic): the same answers and metrics
    from slm_ray.config import validate_config

    data = trial.config.model_dump(by_alias=True)
    data["experiment"]["output_dir"] = str(sweep_env / "reference")
    reference_cfg = validate_config(data)
    reference = run_experiment(reference_cfg, show_progress=False)
    results = json.loads((folder / "results.json").read_text())
    assert results["metrics"] == reference["metrics"]
    reference_rows = {json.loads(line)["id"]: json.loads(line)
                      for line in (output_dir(reference_cfg) / PREDICTIONS).read_text().splitlines()}
    assert {r["id"]: r["prediction"] for r in rows} == {i: r["prediction"] for i, r in reference_rows.items()}

    # and the sweep verifies; a tampered summary.json / summary.csv does not
    sweep_dir = sweep_env / "outputs" / "sweeps" / "kill"
    code, text = _verify(sweep_dir, capsys)
    assert code == 0 and "verified 1 trials" in text, text
    for name in ("summary.json", "summary.csv"):
        original = (sweep_dir / name).read_text()
        if name == "summary.json":
            summary = json.loads(original)
            summary["trials"][0]["exact_match"] = 0.75
            (sweep_dir / name).write_text(json.dumps(summary))
        else:
            header, row = original.splitlines()[:2]
            cells = row.split(",")
            cells[header.split(",").index("n_examples")] = "39"
            (sweep_dir / name).write_text("\n".join([header, ",".join(cells)]) + "\n")
        code, text = _verify(sweep_dir, capsys)
        assert code == 1 and name in text and trial.name in text, text
        (sweep_dir / name).write_text(original)


# --- 3 and 4b. the shared retriever actor ----------------------------------------------------------------


def _retriever_setup(make_config, small_corpus: Path, cache: Path, name: str) -> tuple[Any, Any, list[str]]:
    import ray

    from slm_ray.data.corpus import load_corpus
    from slm_ray.experiment import build_dataset
    from slm_ray.retrieval.base import build_or_load
    from slm_ray.retrieval.service import RETRIEVER_RESTARTS, RetrieverService

    cfg = make_config("retriever=bm25", "retriever.k=3", "corpus=file", f"corpus.path={small_corpus}",
                      "dataset.limit=40", f"experiment.cache_dir={cache}")
    handle = ray.remote(RetrieverService).options(name=name, namespace="reliability", num_cpus=0,
                                                  **RETRIEVER_RESTARTS).remote(
        name, cfg.retriever.model_dump(by_alias=True), cfg.corpus.model_dump(), str(cache), None, 1, 0.5)
    questions = [e.question for e in build_dataset(cfg)]
    warm = ray.get(handle.warmup.remote())
    direct = build_or_load(cfg.retriever, load_corpus(cfg.corpus, str(cache)), str(cache))[0]
    return handle, (warm, direct, cfg), questions


def _as_ids(rows: list[list[Any]]) -> list[list[tuple[str, float]]]:
    return [[(h.passage.id, round(float(h.score), 5)) for h in row] for row in rows]


def _expected(direct: Any, questions: list[str], k: int) -> dict[str, list[tuple[str, float]]]:
    return dict(zip(questions, _as_ids(direct.retrieve(questions, k))))


@pytest.mark.parametrize("callers", ["threads", "ray_tasks"])
def test_shared_retriever_answers_concurrent_batches_like_a_direct_call(local_ray, make_config, small_corpus: Path,
                                                                        tmp_path: Path, callers: str) -> None:
    import ray

    from slm_ray.retrieval.service import RetrieverClient

    handle, (warm, direct, cfg), questions = _retriever_setup(make_config, small_corpus, tmp_path / "cache",
                                                              f"retriever-load-{callers}")
    expected = _expected(direct, questions, 3)
    batches = [questions[i::6][j:j + 4] for i in range(6) for j in range(0, 8, 4)]
    batches = [b for b in batches if b]
    client = RetrieverClient(f"retriever-load-{callers}", "reliability")
    if callers == "threads":
        answers: dict[int, Any] = {}

        def ask(i: int, batch: list[str]) -> None:
            answers[i] = _as_ids(client.retrieve(batch, 3))

        threads = [threading.Thread(target=ask, args=(i, b)) for i, b in enumerate(batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        got = [answers[i] for i in range(len(batches))]
    else:
        name = f"retriever-load-{callers}"

        def ask(batch: list[str]) -> list[list[tuple[str, float]]]:  # self-contained: pickled by value
            from slm_ray.retrieval.service import RetrieverClient

            rows = RetrieverClient(name, "reliability").retrieve(batch, 3)
            return [[(h.passage.id, round(float(h.score), 5)) for h in row] for row in rows]

        remote_ask = ray.remote(num_cpus=0)(ask)
        got = ray.get([remote_ask.remote(b) for b in batches], timeout=120)
    for batch, answer in zip(batches, got):
        assert answer == [expected[q] for q in batch]
    stats = ray.get(handle.stats.remote())
    assert stats["queries_searched"] == len(set(q for b in batches for q in b))
    ray.kill(handle, no_restart=True)


def test_killed_retriever_is_restarted_from_the_cached_index(local_ray, make_config, small_corpus: Path,
                                                             tmp_path: Path) -> None:
    import ray

    from slm_ray.retrieval.service import RetrieverClient

    cache = tmp_path / "cache"
    handle, (warm, direct, cfg), questions = _retriever_setup(make_config, small_corpus, cache, "retriever-kill")
    assert warm["index_built_now"] is True
    index_files = {str(p): p.stat().st_mtime_ns for p in (cache / "indexes").rglob("*")}
    assert index_files
    first_pid = ray.get(handle.stats.remote())["pid"]
    expected = _expected(direct, questions, 3)
    client = RetrieverClient("retriever-kill", "reliability")
    answers: dict[int, list[Any]] = {i: [] for i in range(3)}
    errors: list[BaseException] = []
    halfway = threading.Event()
    answered_at: list[float] = []

    def caller(i: int) -> None:  # a waiting trial: one batch after another
        try:
            for n, start in enumerate(range(i, len(questions), 3)):
                batch = questions[start:start + 2]
                answers[i].append((batch, _as_ids(client.retrieve(batch, 3))))
                answered_at.append(time.monotonic())
                if n == 2:
                    halfway.set()
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    assert halfway.wait(60)
    killed_at = time.monotonic()
    ray.kill(handle, no_restart=False)  # the process dies; Ray restarts the actor
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(1 for t in answered_at if t > killed_at) >= 3  # the callers went on after the kill
    for i in range(3):
        assert answers[i] and all(answer == [expected[q] for q in batch] for batch, answer in answers[i])
    stats = ray.get(handle.stats.remote())
    assert stats["pid"] != first_pid  # a new process answered
    again = ray.get(handle.warmup.remote())
    assert again["index_built_now"] is False  # loaded from the cache, not rebuilt
    assert {str(p): p.stat().st_mtime_ns for p in (cache / "indexes").rglob("*")} == index_files
    assert client.retrieve(questions[:5], 3) and _as_ids(client.retrieve(questions[:5], 3)) == [
        expected[q] for q in questions[:5]]
    ray.kill(handle, no_restart=True)


# --- 4a. a sweep of 24 trials, two at a time ----------------------------------------------------------------


def test_sweep_of_24_trials_two_at_a_time(local_ray, sweep_env: Path, sweep_cache_dir: Path, capsys) -> None:
    from slm_ray.sweeps.engine import run_sweep
    from slm_ray.sweeps.spec import load_sweep

    sweep = sweep_env / "load.yaml"
    sweep.write_text(f"""
name: load
overrides: [tracker=none, "experiment.cache_dir={sweep_cache_dir}", experiment.bootstrap_resamples=50,
            experiment.memory_interval_s=0.5]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, oracle_context]
  dataset.limit: [1, 2, 3, 4, 5, 6]
resources: {{cpus: 1}}
max_concurrent_trials: 2
""")
    plan = load_sweep(sweep)
    assert len(plan.trials) == 24
    record = run_sweep(plan, dashboard=False)
    assert record["trials_outcome"] == {"ok": 24, "failed": 0, "not_run": 0}
    assert record["max_concurrent_trials"] == 2
    sweep_dir = sweep_env / "outputs" / "sweeps" / "load"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"ok": 24}
    for trial in plan.trials:
        results = json.loads((sweep_dir / "trials" / trial.name / "results.json").read_text())
        assert results["n_examples"] == trial.config.dataset.limit
    code, text = _verify(sweep_dir, capsys)
    assert code == 0 and "verified 24 trials" in text, text


# --- SIGTERM / SIGINT to the command line -------------------------------------------------------------------


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_signal_stops_the_run_like_ctrl_c_and_the_rerun_completes(signum: str, tmp_path: Path,
                                                                   shared_cache: Path) -> None:
    import os
    import signal

    limit = 120
    command = [sys.executable, "-m", "slm_ray.run", "model=tiny_llama", "tracker=none", f"dataset.limit={limit}",
               "model.batch_size=1", "experiment_mode=no_context", f"experiment.output_dir={tmp_path / 'out'}",
               f"experiment.cache_dir={shared_cache}", "experiment.bootstrap_resamples=50"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 90
    found: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        found = list((tmp_path / "out").glob(f"*/{PREDICTIONS}"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None and found, "the run ended before it could be interrupted"
    process.send_signal(getattr(signal, signum))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted: finished work is saved" in err
    path = found[0]
    kept = [json.loads(line)["id"] for line in path.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(kept) < limit and not (path.parent / "results.json").exists()

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert len(ids) == limit and len(set(ids)) == limit and ids[: len(kept)] == kept
    assert json.loads((path.parent / "results.json").read_text())["n_examples"] == limit
