"""The run folder's owner: one writer at a time, answers tied to their inputs, finished runs left
alone, segments aggregated, names that cannot escape, bad prediction lines refused.

Every case is what a user does by hand (rerun, edit the data, start a second run, typo a name),
done here with real files, real processes and the tiny real models."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slm_ray.experiment import output_dir, run_experiment
from slm_ray.run import main as run_main
from slm_ray.store.run_folder import (LOCK, PREDICTIONS, REPLACED_MARK, BadPredictions, FolderLock, InputsChanged,
                                      read_predictions)

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "tracker=none", "experiment.bootstrap_resamples=50"]


def _qa(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answers": [f"a{i}"]}) + "\n" for i, q in enumerate(questions)))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK}


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = run_main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _one_error(text: str) -> str:
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


@pytest.fixture
def in_tmp(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Work in tmp_path; the arguments every CLI run of these tests shares."""
    monkeypatch.chdir(tmp_path)
    return [*TINY, f"experiment.cache_dir={shared_cache}", "experiment.output_dir=out"]


# --- answers tied to their inputs ------------------------------------------------------------------------


def test_an_edited_data_file_is_refused_and_replace_moves_the_old_answers_aside(in_tmp, tmp_path, capsys) -> None:
    data = _qa(tmp_path / "qa.jsonl", ["who wrote hamlet", "capital of france", "largest planet"])
    args = [*in_tmp, "dataset=file", f"dataset.path={data}", "experiment.name=mine"]
    assert _cli(args, capsys)[0] == 0
    folder = tmp_path / "out" / "mine"
    before = _snapshot(folder)

    _qa(data, ["who wrote hamlet", "capital of spain", "largest planet"])  # one question edited
    code, text = _cli(args, capsys)
    assert code == 2 and "the examples" in _one_error(text) and "experiment.replace=true" in text
    assert _snapshot(folder) == before, "a refused rerun changes nothing"

    code, text = _cli([*args, "experiment.replace=true"], capsys)
    assert code == 0, text
    aside = [p for p in (tmp_path / "out").iterdir() if REPLACED_MARK in p.name]
    assert len(aside) == 1 and _snapshot(aside[0]) == before, "the old answers are kept, moved aside"
    questions = [r["question"] for r in read_predictions(folder / PREDICTIONS)]
    assert sorted(questions) == ["capital of spain", "largest planet", "who wrote hamlet"]


def test_a_changed_setting_is_named(in_tmp, capsys) -> None:
    assert _cli([*in_tmp, "dataset.limit=3", "experiment.name=x"], capsys)[0] == 0
    code, text = _cli([*in_tmp, "dataset.limit=3", "experiment.name=x", "model.max_new_tokens=4"], capsys)
    assert code == 2 and "model.max_new_tokens: 8 -> 4" in _one_error(text)


def test_an_edited_corpus_is_refused(make_config, small_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(small_corpus.read_text())
    overrides = ("model=tiny_llama", "dataset.limit=4", "experiment_mode=retriever_context", "corpus=file",
                 f"corpus.path={corpus}", "experiment.name=rag")
    run_experiment(make_config(*overrides), show_progress=False)
    lines = corpus.read_text().splitlines()
    first = json.loads(lines[0])
    first["text"] = "an edited passage"
    corpus.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(InputsChanged, match="corpus content changed"):
        run_experiment(make_config(*overrides), show_progress=False)


def test_a_new_version_of_an_s3_dataset_is_refused(make_config, s3_client, s3_bucket) -> None:
    def upload(questions: list[str]) -> None:
        body = "".join(json.dumps({"question": q, "answers": ["x"]}) + "\n" for q in questions)
        s3_client.put_object(Bucket=s3_bucket, Key="qa.jsonl", Body=body.encode())

    upload(["q one", "q two"])
    overrides = ("model=tiny_llama", "dataset=file", f"dataset.path=s3://{s3_bucket}/qa.jsonl", "experiment.name=s3")
    run_experiment(make_config(*overrides), show_progress=False)
    upload(["q one", "q two, edited"])
    with pytest.raises(InputsChanged, match="the examples"):
        run_experiment(make_config(*overrides), show_progress=False)


# --- a finished run stays finished; a resumed run keeps every segment's measurements ----------------------


def test_rerunning_a_finished_run_changes_nothing_and_says_so(in_tmp, tmp_path, capsys, caplog) -> None:
    args = [*in_tmp, "dataset.limit=6", "experiment.name=done"]
    assert _cli(args, capsys)[0] == 0
    folder = tmp_path / "out" / "done"
    before = _snapshot(folder)
    caplog.set_level("INFO", logger="slm_ray")
    code, text = _cli(args, capsys)
    assert code == 0 and "is complete (6 examples): nothing to run" in caplog.text
    assert _snapshot(folder) == before
    results = json.loads((folder / "results.json").read_text())
    assert results["throughput"]["examples_per_second"] > 0 and results["memory"]["model"]["peak_rss_mb"] > 0


class _StopAfter:
    """Fault injection: a real generator whose batches stop with Ctrl-C after ``batches`` of them."""

    def __init__(self, batches: int):
        self.batches = batches

    def __call__(self, cfg):
        from slm_ray.experiment import build_generator

        generator = build_generator(cfg)
        inner = generator.generate_batches

        def generate_batches(prompts):
            for n, batch in enumerate(inner(prompts)):
                if n == self.batches:
                    raise KeyboardInterrupt
                yield batch

        generator.generate_batches = generate_batches
        return generator


def test_a_resumed_run_aggregates_the_time_and_memory_of_every_segment(make_config) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=12", "model.batch_size=4", "experiment.name=seg")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, generator=_StopAfter(2), show_progress=False)
    folder = output_dir(cfg)
    first = json.loads((folder / "segments.json").read_text())
    assert len(first) == 1 and first[0]["generated_examples"] == 8 and first[0]["generation_seconds"] > 0
    results = run_experiment(cfg, show_progress=False)
    segments = json.loads((folder / "segments.json").read_text())
    assert [s["generated_examples"] for s in segments] == [8, 4] and results["segments"] == 2
    seconds = sum(s["generation_seconds"] for s in segments)
    assert results["throughput"]["generation_seconds"] == pytest.approx(seconds, abs=1e-3)
    assert results["throughput"]["examples_per_second"] == pytest.approx(12 / seconds, rel=1e-2)
    peaks = [s["memory"]["model"]["peak_rss_mb"] for s in segments]
    assert results["memory"]["model"]["peak_rss_mb"] == pytest.approx(max(peaks))
    memory = json.loads((folder / "memory_usage.json").read_text())
    assert len(memory["segments"]) == 2 and memory["components"]["model"]["peak_rss_mb"] == pytest.approx(max(peaks))
    assert len(read_predictions(folder / PREDICTIONS)) == 12


def test_a_crash_after_the_last_answer_finishes_with_the_measured_throughput(make_config) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=5", "experiment.name=late")
    first = run_experiment(cfg, show_progress=False)
    (output_dir(cfg) / "results.json").unlink()  # killed between the last batch and results.json
    again = run_experiment(cfg, show_progress=False)
    assert again["throughput"] == first["throughput"] and again["memory"] == first["memory"]


# --- one writer at a time ---------------------------------------------------------------------------------


def _hold_lock(folder: Path) -> subprocess.Popen:
    """A live process holding ``folder``'s lock, as a running experiment does."""
    code = ("import sys, time; from pathlib import Path; from slm_ray.store.run_folder import FolderLock; "
            "FolderLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_on_the_same_folder_is_refused_and_a_dead_holder_is_taken_over(in_tmp, tmp_path,
                                                                                         capsys) -> None:
    folder = tmp_path / "out" / "busy"
    holder = _hold_lock(folder)
    try:
        code, text = _cli([*in_tmp, "dataset.limit=3", "experiment.name=busy"], capsys)
        error = _one_error(text)
        assert code == 2 and f"in use by pid {holder.pid} on {socket.gethostname()}" in error
        assert sorted(p.name for p in folder.iterdir()) == [LOCK], "the refused run wrote nothing"
        assert str(holder.pid) in (folder / LOCK).read_text(), "nor touched the holder's record"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, text = _cli([*in_tmp, "dataset.limit=3", "experiment.name=busy"], capsys)
    assert code == 0, text
    assert len(read_predictions(folder / PREDICTIONS)) == 3


def test_two_identical_runs_at_once_write_each_answer_once(tmp_path: Path, shared_cache: Path) -> None:
    args = [sys.executable, "-m", "slm_ray.run", *TINY, f"experiment.cache_dir={shared_cache}",
            f"experiment.output_dir={tmp_path / 'out'}", "dataset.limit=20", "experiment.name=twice"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    runs = [subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outcomes = [(run.wait(timeout=300), run.stderr.read()) for run in runs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 2]), outcomes
    if codes == [0, 2]:
        assert "in use by pid" in next(err for code, err in outcomes if code == 2)
    ids = [r["id"] for r in read_predictions(tmp_path / "out" / "twice" / PREDICTIONS)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 20


def test_a_refused_run_never_deletes_another_runs_folder(in_tmp, tmp_path, capsys) -> None:
    live = tmp_path / "out" / "a_live_run"
    holder = _hold_lock(live)
    try:
        (live / PREDICTIONS).write_text("")
        code, text = _cli([*in_tmp, "dataset.limit=1", "experiment.name=b", "model.gguf_file=missing.gguf",
                           "model=smollm2_135m_gguf", "tracker=none"], capsys)
        assert code == 2 and "missing.gguf" in _one_error(text)
        assert live.is_dir() and (live / PREDICTIONS).is_file() and (live / LOCK).is_file()
        assert not (tmp_path / "out" / "b").exists(), "the refused run removes what it created, only that"
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_run_in_a_fresh_root_leaves_nothing(in_tmp, tmp_path, capsys) -> None:
    code, text = _cli([*in_tmp, "dataset.limit=1", "model.gguf_file=missing.gguf", "model=smollm2_135m_gguf",
                       "tracker=none"], capsys)
    assert code == 2 and not (tmp_path / "out").exists(), text


def test_a_second_sweep_on_the_same_folder_is_refused_before_ray_starts(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    from slm_ray.sweep import main as sweep_main

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: same\noverrides: [tracker=none, dataset.limit=2]\ngrid: {model: [tiny_llama]}\n")
    holder = _hold_lock(tmp_path / "outputs" / "sweeps" / "same")
    try:
        code = sweep_main([str(sweep)])
        text = capsys.readouterr().err
        assert code == 2 and f"in use by pid {holder.pid}" in _one_error(text) and "sweep" in text
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "outputs" / "sweeps" / "same").iterdir()) == [LOCK]


# --- names that become paths ----------------------------------------------------------------------------

NAME_CASES = [
    ("model.name=../escaped_model", "model.name='../escaped_model'"),
    ("model.name=/abs/path", "model.name='/abs/path'"),
    ("retriever.name=../../x", "retriever.name='../../x'"),
    ("dataset.name=a/b", "dataset.name='a/b'"),
    ("experiment.name=" + "n" * 300, "is 300 characters long"),
    ("model.name=" + "m" * 200, "is 200 characters long"),
    ("experiment.name=x\n", "experiment.name=x\\n"),
    ("experiment.name=..", "experiment.name='..'"),
    ("experiment.name=.hidden", "experiment.name='.hidden'"),
]


@pytest.mark.parametrize("override,expected", NAME_CASES, ids=[c[0][:40] for c in NAME_CASES])
def test_a_name_that_would_escape_or_break_the_output_root_is_refused(override, expected, in_tmp, tmp_path,
                                                                       capsys) -> None:
    before = sorted(tmp_path.rglob("*"))
    code, text = _cli([*in_tmp, "experiment_mode=retriever_context", override], capsys)
    assert code == 2 and expected in _one_error(text)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("name,problem", [("x\n", "control character"), ("a" * 161, "161 characters"),
                                          ("a..b", "'..'"), ("a/b", "separator"), ("", "empty"), ("ok_name-1.5=x+y", None)])
def test_one_check_for_every_name(name: str, problem: str | None) -> None:
    from slm_ray.store.names import name_problem

    found = name_problem(name)
    assert (found is None) if problem is None else (problem in found)


def test_a_sweep_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    from slm_ray.sweeps.spec import SweepError, load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text('name: "smoke\\n"\ngrid: {model: [tiny_llama]}\n')
    with pytest.raises(SweepError, match="control character"):
        load_sweep(sweep)


def test_a_long_default_run_name_is_refused_with_what_to_do(in_tmp, capsys) -> None:
    code, text = _cli([*in_tmp, "model.name=" + "m" * 150], capsys)
    assert code == 2 and "set experiment.name" in _one_error(text)


# --- prediction files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_line", ["{broken", "[]", '{"id": "nq-1"}', '"text"'])
def test_a_bad_line_inside_predictions_is_refused_and_nothing_is_regenerated(bad_line, make_config,
                                                                             capsys) -> None:
    from slm_ray.report import main as report_main

    cfg = make_config("model=tiny_llama", "dataset.limit=6", "model.temperature=0.8", "experiment.name=bad")
    run_experiment(cfg, show_progress=False)
    path = output_dir(cfg) / PREDICTIONS
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], bad_line, *lines[2:4]]) + "\n")  # 4 answers kept, 2 missing
    text = path.read_text()
    with pytest.raises(BadPredictions, match=f"{PREDICTIONS}:3: "):
        run_experiment(cfg, show_progress=False)
    assert path.read_text() == text, "nothing regenerated, nothing dropped"
    assert report_main(["--verify", str(output_dir(cfg))]) == 1
    assert f"{PREDICTIONS}:3:" in capsys.readouterr().err


def test_a_torn_last_line_is_dropped_and_answered_again(make_config) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=6", "experiment.name=torn")
    full = run_experiment(cfg, show_progress=False)
    path = output_dir(cfg) / PREDICTIONS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][:10])
    (output_dir(cfg) / "results.json").unlink()
    resumed = run_experiment(cfg, show_progress=False)
    assert resumed["metrics"] == full["metrics"] and len(read_predictions(path)) == 6


# --- an output folder that cannot be used ----------------------------------------------------------------


def test_an_output_dir_that_is_a_file_is_one_line(in_tmp, tmp_path, capsys) -> None:
    (tmp_path / "out").write_text("not a folder")
    code, text = _cli([*in_tmp, "dataset.limit=1"], capsys)
    assert code == 2 and "out is a file, not a folder" in _one_error(text)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_one_line(in_tmp, tmp_path, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o500)
    code, text = _cli([*in_tmp, "dataset.limit=1"], capsys)
    assert code == 2 and "permission denied" in _one_error(text)


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(tmp_path: Path, shared_cache: Path) -> None:
    """The file size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail mid-run as they would."""
    args = [sys.executable, "-m", "slm_ray.run", *TINY, f"experiment.cache_dir={shared_cache}",
            f"experiment.output_dir={tmp_path / 'out'}", "dataset.limit=24", "model.batch_size=4",
            "experiment.name=full"]
    limit = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000)); sys.argv = sys.argv[1:]; "
             "runpy.run_module('slm_ray.run', run_name='__main__')")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    full = subprocess.run([sys.executable, "-c", limit, *args[2:]], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 2, full.stderr
    assert "file size limit" in _one_error(full.stderr)
    predictions = tmp_path / "out" / "full" / PREDICTIONS
    kept = len(read_predictions(predictions))
    assert 0 < kept < 24
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in read_predictions(predictions)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 24


def test_a_tidy_release_removes_only_the_empty_folders_this_lock_created(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path / "root" / "run").acquire()
    lock.release(tidy=True)
    assert not (tmp_path / "root").exists()
    lock = FolderLock(tmp_path / "root" / "run").acquire()
    (tmp_path / "root" / "other_run").mkdir()  # another run appeared in the root meanwhile
    lock.release(tidy=True)
    assert not (tmp_path / "root" / "run").exists() and (tmp_path / "root" / "other_run").is_dir()


def test_new_bootstrap_settings_recompute_results_from_the_stored_answers(make_config, monkeypatch) -> None:
    import slm_ray.experiment as experiment

    first = run_experiment(make_config("model=tiny_llama", "dataset.limit=8", "experiment.name=boot"),
                           show_progress=False)
    monkeypatch.setattr(experiment, "build_generator", lambda cfg: pytest.fail("no answer needs generating"))
    again = run_experiment(make_config("model=tiny_llama", "dataset.limit=8", "experiment.name=boot",
                                       "experiment.bootstrap_resamples=300", "experiment.seed=7"), show_progress=False)
    from slm_ray.evaluation.metrics import aggregate

    rows = read_predictions(output_dir(make_config("model=tiny_llama", "experiment.name=boot")) / PREDICTIONS)
    rows.sort(key=lambda r: int(r["id"].removeprefix("nq-")))
    assert again["metrics"] == aggregate([r["metrics"] for r in rows], n_resamples=300, seed=7)
    assert again["metrics"]["token_recall"]["mean"] == first["metrics"]["token_recall"]["mean"]
    assert again["throughput"] == first["throughput"] and again["memory"] == first["memory"]


def test_a_run_refused_after_its_folder_was_made_removes_only_its_own_files(make_config, tmp_path) -> None:
    """A refusal that only the model load finds (past every check before it): the refused run's new
    folder goes, the live run beside it in the same fresh root stays whole."""
    from slm_ray.errors import ConfigError

    def refuse(cfg):
        raise ConfigError("model.device='cuda' but no CUDA GPU is visible")

    live = tmp_path / "outputs" / "a_live_run"
    holder = _hold_lock(live)
    try:
        (live / PREDICTIONS).write_text('{"id": "x"}\n')
        with pytest.raises(ConfigError):
            run_experiment(make_config("model=tiny_llama", "dataset.limit=2", "experiment.name=b"), generator=refuse,
                           show_progress=False)
        assert not (tmp_path / "outputs" / "b").exists()
        assert sorted(p.name for p in live.iterdir()) == [LOCK, PREDICTIONS]
    finally:
        holder.kill()
        holder.wait()


def test_a_finished_run_missing_an_answer_answers_it_again(make_config) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=10", "experiment.name=gap")
    first = run_experiment(cfg, show_progress=False)
    path = output_dir(cfg) / PREDICTIONS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[4:]))  # one answer deleted by hand, results.json still there
    again = run_experiment(cfg, show_progress=False)
    assert again["n_examples"] == 10 and len(read_predictions(path)) == 10
    assert again["metrics"] == first["metrics"]


@pytest.mark.parametrize("entry", ["notes.txt", "sweeps_of_someone/", "sweep.json"])
def test_a_folder_that_is_not_a_run_folder_is_refused(entry, in_tmp, tmp_path, capsys) -> None:
    folder = tmp_path / "out" / "taken"
    folder.mkdir(parents=True)
    (folder / entry.rstrip("/")).mkdir() if entry.endswith("/") else (folder / entry).write_text("mine")
    before = sorted(p.name for p in folder.iterdir())
    code, text = _cli([*in_tmp, "dataset.limit=2", "experiment.name=taken"], capsys)
    assert code == 2 and "is not a run folder" in _one_error(text) and entry in text
    assert sorted(p.name for p in folder.iterdir()) == before, "a refused run leaves the folder as it was"


def test_the_sweeps_root_cannot_be_taken_or_replaced_by_a_run(in_tmp, tmp_path, capsys) -> None:
    sweeps = tmp_path / "out" / "sweeps" / "s1" / "trials"
    sweeps.mkdir(parents=True)
    code, text = _cli([*in_tmp, "dataset.limit=2", "experiment.name=sweeps", "experiment.replace=true"], capsys)
    assert code == 2 and "is not a run folder" in _one_error(text)
    assert sweeps.is_dir() and not list((tmp_path / "out").glob(f"*{REPLACED_MARK}*"))


def test_deleting_the_lock_file_does_not_free_a_held_folder(in_tmp, tmp_path, capsys) -> None:
    folder = tmp_path / "out" / "held"
    holder = _hold_lock(folder)
    try:
        (folder / LOCK).unlink()  # what a user does with a lock that looks stale
        code, text = _cli([*in_tmp, "dataset.limit=2", "experiment.name=held"], capsys)
        assert code == 2 and "in use by" in _one_error(text)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("question,expected", [("word " * 3000, "tokens without any passage"),
                                                ("x" * 200_000, "characters long")])
def test_a_question_longer_than_the_prompt_budget_is_refused(question, expected, in_tmp, tmp_path, capsys) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"question": "a short one", "answers": ["a"]}) + "\n"
                    + json.dumps({"question": question, "answers": ["a"]}) + "\n")
    code, text = _cli([*in_tmp, "dataset=file", f"dataset.path={data}", "model.max_prompt_tokens=2048"], capsys)
    error = _one_error(text)
    assert code == 2 and "example 'file-1'" in error and expected in error and "max_prompt_tokens=2048" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,expected", [
    ("experiment.output_dir=" + "e" * 300, "has a part of 300 bytes"),
    ("experiment.cache_dir=afile", "is a file, not a folder"),
    ("experiment.output_dir=afile/out", "is a file, not a folder"),
    ("prompt.with_context='Q: {question}'", "with_context must contain {context}"),
    ("prompt.passage=fixed", "passage must contain {text}"),
])
def test_unusable_folders_and_prompts_that_hide_the_passages_are_one_line(override, expected, in_tmp, tmp_path,
                                                                          capsys) -> None:
    (tmp_path / "afile").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    code, text = _cli([*in_tmp, "experiment_mode=retriever_context", override], capsys)
    assert code == 2 and expected in _one_error(text)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_number_is_a_fine_experiment_name_and_a_damaged_config_json_is_repaired(in_tmp, tmp_path, capsys) -> None:
    args = [*in_tmp, "dataset.limit=2", "experiment.name=123"]
    assert _cli(args, capsys)[0] == 0
    (tmp_path / "out" / "123" / "config.json").write_text("[]")
    assert _cli(args, capsys)[0] == 0
    assert json.loads((tmp_path / "out" / "123" / "config.json").read_text())["experiment"]["name"] == "123"


def test_a_run_into_a_trial_folder_of_a_running_sweep_is_refused(in_tmp, tmp_path, capsys) -> None:
    sweep = tmp_path / "out" / "sweeps" / "busy"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    args = [*in_tmp, "dataset.limit=2", f"experiment.output_dir={sweep / 'trials'}", "experiment.name=t1"]
    holder = _hold_lock(sweep)  # the sweep's driver
    try:
        code, text = _cli(args, capsys)
        assert code == 2 and "is a trial of the sweep" in _one_error(text) and f"pid {holder.pid}" in text
        assert not (sweep / "trials" / "t1").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _cli(args, capsys)[0] == 0, "once the sweep is over, a trial can be run alone (as --cfg prints it)"


def test_a_sweep_trial_refuses_data_changed_since_the_driver_checked_it(make_config, tmp_path) -> None:
    from slm_ray.inputs import run_inputs
    from slm_ray.experiment import build_dataset

    data = _qa(tmp_path / "qa.jsonl", ["q one", "q two"])
    cfg = make_config("model=tiny_llama", "dataset=file", f"dataset.path={data}", "experiment.name=pinned")
    checked = run_inputs(cfg, build_dataset(cfg)).to_json()
    _qa(data, ["q one", "q two, edited while the sweep ran"])
    with pytest.raises(InputsChanged, match="changed after the sweep started: the examples"):
        run_experiment(cfg, show_progress=False, expected_inputs=checked)
    assert not output_dir(cfg).exists()
