"""What a user types and sees: the ``slm-ray`` command, Hydra's flags, run.log, a calm sweep console,
and no Ray processes left behind by a killed driver. Everything runs through the real command line."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLM_RAY = Path(sys.executable).parent / "slm-ray"
TINY_SWEEP = """\
name: calm
overrides: [dataset=nq, dataset.limit=4, tracker=none, retriever.k=2]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, retriever_context]
resources: {cpus: 1, gpus: auto}
"""


def slm_ray(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    assert SLM_RAY.is_file(), f"{SLM_RAY} missing: install the package (bash scripts/setup.sh)"
    return subprocess.run([str(SLM_RAY), *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def user_conf(root: Path, name: str = "my_model") -> Path:
    """A user's config folder with one model option of their own (the tiny Llama, renamed)."""
    folder = root / "my_conf"
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / f"{name}.yaml").write_text(f"defaults:\n  - tiny_llama\n  - _self_\nname: {name}\n"
                                                   "max_new_tokens: 4\n")
    return folder


# --- the command ---------------------------------------------------------------------------------------

def test_slm_ray_lists_its_commands_and_explains_each(tmp_path: Path) -> None:
    top = slm_ray("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ("run", "sweep", "report", "compare", "fetch"):
        assert f"slm-ray {command}" in top.stdout
    for command in ("run", "sweep", "report"):
        explained = slm_ray(command, "--help", cwd=tmp_path)
        assert explained.returncode == 0 and f"slm-ray {command}" in explained.stdout, explained.stderr
    assert slm_ray(cwd=tmp_path).returncode == 2, "no command: usage and a usage error"
    wrong = slm_ray("rnu", cwd=tmp_path)
    assert wrong.returncode == 2 and "unknown command 'rnu'" in wrong.stderr and "run, sweep" in wrong.stderr


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path: Path) -> None:
    """`slm-ray sweep --list | head -1`: the command stops quietly, as `slm-ray run --cfg | head` does."""
    child = subprocess.Popen([sys.executable, "-m", "slm_ray", "sweep", "--list"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    child.stdout.close()  # before it writes: every write meets a closed pipe
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_python_dash_m_slm_ray_is_the_same_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "slm_ray", "run", "--cfg", "job", "model=tiny_qwen3"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and yaml.safe_load(done.stdout)["model"]["name"] == "tiny_qwen3"


# --- Hydra's habits --------------------------------------------------------------------------------------

def test_multirun_with_cfg_job_prints_each_job_as_yaml(tmp_path: Path) -> None:
    done = slm_ray("run", "-m", "model.temperature=0,0.5", "--cfg", "job", "model=tiny_llama", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert [job["model"]["temperature"] for job in jobs] == [0.0, 0.5]
    assert {job["model"]["name"] for job in jobs} == {"tiny_llama"}
    assert not (tmp_path / "outputs").exists(), "--cfg prints and writes nothing"
    long_form = slm_ray("run", "--multirun", "model.temperature=0,0.5", "--cfg=job", "model=tiny_llama", cwd=tmp_path)
    assert long_form.stdout == done.stdout


def test_cfg_hydra_and_all_show_hydras_config_with_the_users_folder(tmp_path: Path) -> None:
    conf = user_conf(tmp_path)
    hydra_only = slm_ray("run", "--config-dir", str(conf), "--cfg", "hydra", cwd=tmp_path)
    assert hydra_only.returncode == 0, hydra_only.stderr
    shown = yaml.safe_load(hydra_only.stdout)
    assert shown["searchpath"] == [f"file://{conf.resolve()}"]
    assert "experiment_mode" not in shown
    both = slm_ray("run", "--cfg", "all", "model=tiny_llama", cwd=tmp_path)
    docs = [doc for doc in yaml.safe_load_all(both.stdout) if doc]
    assert "searchpath" in docs[0] and docs[-1]["model"]["name"] == "tiny_llama"
    bad = slm_ray("run", "--cfg", "jobs", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --cfg 'jobs': expected one of job, hydra, all"


def test_config_dir_adds_a_users_model_and_runs_it(tmp_path: Path) -> None:
    conf = user_conf(tmp_path)
    done = slm_ray("run", "--config-dir", str(conf), "model=my_model", "dataset.limit=2", "tracker=none",
                   f"experiment.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "outputs" / "my_model_nq_no_context" / "results.json").read_text())
    assert results["model"] == "my_model" and results["n_examples"] == 2
    typo = slm_ray("run", "--config-dir", str(conf), "model=my_modle", cwd=tmp_path)
    assert typo.returncode == 2
    assert "unknown model option 'my_modle'" in typo.stderr and "my_model" in typo.stderr and "tiny_llama" in typo.stderr


def test_slm_ray_config_dir_adds_to_conf_instead_of_replacing_it(tmp_path: Path) -> None:
    conf = user_conf(tmp_path)
    env = {"SLM_RAY_CONFIG_DIR": str(conf)}
    mine = slm_ray("run", "--cfg", "job", "model=my_model", cwd=tmp_path, env=env)
    assert mine.returncode == 0 and yaml.safe_load(mine.stdout)["model"]["max_new_tokens"] == 4
    builtin = slm_ray("run", "--cfg", "job", "model=tiny_qwen3", "dataset=simpleqa", cwd=tmp_path, env=env)
    assert builtin.returncode == 0, builtin.stderr
    missing = slm_ray("run", "--cfg", "job", cwd=tmp_path, env={"SLM_RAY_CONFIG_DIR": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "SLM_RAY_CONFIG_DIR" in missing.stderr and "does not exist" in missing.stderr


def test_a_user_option_named_like_a_builtin_is_refused_not_ignored(tmp_path: Path) -> None:
    conf = user_conf(tmp_path, name="tiny_llama")
    done = slm_ray("run", "--config-dir", str(conf), "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 2
    assert "has the name of the built-in model option 'tiny_llama'" in done.stderr


def test_sweeps_take_the_same_flags(tmp_path: Path) -> None:
    conf = user_conf(tmp_path)
    sweep = tmp_path / "mine.yaml"
    sweep.write_text("name: mine\ngrid:\n  model: [my_model, tiny_llama]\n")
    done = slm_ray("sweep", "-m", "--config-dir", str(conf), "--cfg", str(sweep), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"slm-ray run --config-dir {conf.resolve()} model=my_model" in done.stdout
    unknown = slm_ray("sweep", str(sweep), "--frobnicate", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown option '--frobnicate'" in unknown.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    done = subprocess.run(f"'{SLM_RAY}' run --cfg all | head -1", shell=True, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "# hydra" and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# --- run.log -----------------------------------------------------------------------------------------------

def test_run_log_holds_the_whole_story_of_a_run(tmp_path: Path) -> None:
    done = slm_ray("run", "model=tiny_llama", "experiment_mode=retriever_context", "dataset.limit=60", "tracker=none",
                   f"experiment.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "outputs" / "tiny_llama_nq_retriever_context_bm25-k5" / "run.log").read_text()
    for expected in (r"dataset nq: 60 examples from the packaged file", r"built bm25 index over \d+ passages",
                     r"loaded tiny_llama on cpu", r"\d+/60 examples, [\d.]+ ex/s", r"60/60 examples",
                     r"60 examples, token_recall [\d.]+ \[[\d.]+, [\d.]+\]"):
        assert re.search(expected, log), f"run.log lacks {expected!r}:\n{log}"
    assert "\r" not in done.stderr, "no progress bar where stderr is not a terminal: plain lines"
    assert re.search(r"\d+/60 examples", done.stderr)


# --- the sweep console ---------------------------------------------------------------------------------------

def _without_token_auth_setting() -> dict[str, str]:
    """The environment a user has: RAY_AUTH_MODE unset (Ray's default: token auth on, and a warning)."""
    env = dict(os.environ)
    env.pop("RAY_AUTH_MODE", None)
    return env


def _sweep_command(tmp_path: Path, cache: Path) -> list[str]:
    sweep = tmp_path / "calm.yaml"
    sweep.write_text(TINY_SWEEP)
    return [str(SLM_RAY), "sweep", str(sweep), f"experiment.cache_dir={cache}"]


@pytest.mark.ray
def test_a_sweep_console_is_calm_and_ends_with_the_summary(sweep_env: Path, sweep_cache_dir: Path) -> None:
    done = subprocess.run(_sweep_command(sweep_env, sweep_cache_dir), cwd=sweep_env, env=_without_token_auth_setting(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert not [line for line in lines if "WARNING" in line or "Warning" in line], "no Ray or library warnings"
    assert not [line for line in lines if "pid=" in line], "no worker output with Ray's (Actor pid=...) prefixes"
    assert not [line for line in lines if re.search(r"\d+%\|", line) or "it/s]" in line], "no tqdm bars"
    assert max(len(line) for line in lines) <= 200
    assert len(lines) <= 40, "\n".join(lines)
    assert any(re.search(r"\[generator-\d+\] loaded tiny_llama on cpu", line) for line in lines), "model loads shown"
    assert any(re.search(r"\[retriever-bm25-\w+\] retriever .* index .* (built|loaded)", line) for line in lines)
    sweep_dir = sweep_env / "outputs" / "sweeps" / "calm"
    assert done.stdout.splitlines()[-1] == f"summary: {sweep_dir / 'summary.md'}"
    log = (sweep_dir / "sweep.log").read_text()
    assert "[4/4] ok" in log and "examples, 0 already done" in log, "sweep.log keeps what the console left out"


@pytest.mark.ray
def test_a_failed_trial_is_one_line_without_rays_traceback(sweep_env: Path, sweep_cache_dir: Path) -> None:
    from slm_ray.data.builtin import NQ_OPEN_ORACLE
    from slm_ray.data.files import iter_jsonl

    good = [json.dumps(row) for row, _ in zip(iter_jsonl(NQ_OPEN_ORACLE), range(3))]
    bad = sweep_env / "nq_bad.jsonl"
    bad.write_text("\n".join([good[0], '{"question": "broken', *good[1:]]) + "\n")
    sweep = sweep_env / "bad.yaml"
    sweep.write_text(f"name: bad\noverrides: [dataset=nq, dataset.limit=3, tracker=none]\n"
                     f"grid:\n  model: [tiny_llama]\n  dataset.path: [builtin, '{bad}']\n")
    done = subprocess.run([str(SLM_RAY), "sweep", str(sweep), f"experiment.cache_dir={sweep_cache_dir}"],
                          cwd=sweep_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    console = done.stdout + done.stderr
    failed = [line for line in console.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "DataError" in failed[0] and f"{bad.name}:2" in failed[0], console
    assert "Traceback" not in console and "Tuner.restore" not in console and "pid=" not in console
    assert "1 trial(s) failed: see" in done.stderr
    log = (sweep_env / "outputs" / "sweeps" / "bad" / "sweep.log").read_text()
    assert "Traceback" in log, "Ray's account of the failure is kept in sweep.log"


@pytest.mark.ray
def test_a_sweep_on_a_terminal_shows_one_live_status(sweep_env: Path, sweep_cache_dir: Path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))  # a 150-column terminal
    process = subprocess.Popen(_sweep_command(sweep_env, sweep_cache_dir), cwd=sweep_env,
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        screen += chunk
    assert process.wait(timeout=600) == 0, screen.decode(errors="replace")[-3000:]
    os.close(leader)
    text = screen.decode(errors="replace")
    assert re.search(r"trials: 4/4 done", text), text[-2000:]
    assert "running" in text and "\r" in text, "the status line is redrawn in place"


# --- a killed driver ---------------------------------------------------------------------------------------------

@pytest.mark.ray
def test_a_killed_sweep_driver_leaves_no_ray_processes(sweep_env: Path, sweep_cache_dir: Path) -> None:
    import psutil

    sweep = sweep_env / "slow.yaml"
    sweep.write_text("name: slow\noverrides: [dataset=nq, dataset.limit=2000, tracker=none, model.batch_size=1]\n"
                     "grid:\n  model: [tiny_llama]\n")
    driver = subprocess.Popen([str(SLM_RAY), "sweep", str(sweep), f"experiment.cache_dir={sweep_cache_dir}"],
                              cwd=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert driver.stdout is not None
    for line in driver.stdout:
        if "started" in line:
            break
    time.sleep(2)  # the trial runs: Ray's agents, the pool and a generator worker are up
    tree = psutil.Process(driver.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in tree)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 30
    alive = tree
    while time.monotonic() < deadline:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]


# --- SIGTERM, as a batch scheduler or `timeout` sends it -----------------------------------------------------------

@pytest.mark.ray
def test_sigterm_stops_a_sweep_like_ctrl_c_and_the_rerun_finishes_it(sweep_env: Path, sweep_cache_dir: Path) -> None:
    limit = 200
    sweep = sweep_env / "term.yaml"
    sweep.write_text(f"name: term\noverrides: [dataset=nq, dataset.limit={limit}, tracker=none, model.batch_size=1,"
                     " experiment.bootstrap_resamples=50]\ngrid:\n  model: [tiny_llama]\n")
    command = [str(SLM_RAY), "sweep", str(sweep), f"experiment.cache_dir={sweep_cache_dir}"]
    driver = subprocess.Popen(command, cwd=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    predictions = sweep_env / "outputs" / "sweeps" / "term" / "trials" / "tiny_llama-nq-no_context" / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if predictions.is_file() and len(predictions.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the sweep ended before it could be stopped"
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output[-3000:]
    assert output.strip().splitlines()[-1] == "interrupted: finished work is saved; run the same command again to resume"
    assert "Stack" not in output and "Traceback" not in output and "*** " not in output, output[-3000:]
    kept = [json.loads(line)["id"] for line in predictions.read_text().splitlines()]
    assert 5 <= len(kept) < limit

    again = subprocess.run(command, cwd=sweep_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    ids = [json.loads(line)["id"] for line in predictions.read_text().splitlines()]
    assert len(ids) == limit and len(set(ids)) == limit and ids[:len(kept)] == kept


# --- what an interrupted or dense run says (issue 19, class 5) ------------------------------------------------


@pytest.mark.parametrize("command, patched", [
    (["run", "--cfg", "job", "model=tiny_llama"], "slm_ray.composition.print_configs"),
    (["run", "--cfg", "all", "model=tiny_llama"], "slm_ray.composition.print_configs"),
    (["compare", "a", "b"], "slm_ray.compare._compare_cli"),
])
def test_a_command_with_no_work_to_save_stopped_by_a_signal_does_not_claim_any(
        command: list[str], patched: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Issue 19: ``--cfg`` stopped by SIGTERM said "finished work is saved; run the same command again"."""
    from slm_ray.commands import main as slm_ray_main

    def stopped(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the entry point's handler turns it into KeyboardInterrupt
        time.sleep(5)

    module, _, name = patched.rpartition(".")
    monkeypatch.setattr(f"{module}.{name}", stopped)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert slm_ray_main(command) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert err.strip() == "interrupted", err


def test_a_dense_run_prints_no_loading_bars(tmp_path: Path, small_corpus: Path) -> None:
    """Issue 19: ``slm-ray run retriever=dense`` printed transformers' "Loading weights" bars (with
    their carriage returns) while loading the encoder."""
    done = slm_ray("run", "model=tiny_llama", "retriever=dense", "experiment_mode=retriever_context",
                   "corpus=file", f"corpus.path={small_corpus}", "dataset.limit=2", "tracker=none",
                   f"experiment.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "\r" not in done.stderr and "it/s" not in done.stderr, done.stderr
    assert "built dense index over 80 passages" in done.stderr
