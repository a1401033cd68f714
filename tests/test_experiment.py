"""One experiment end to end on the tiny models: files, resume, tracking, secrets."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from slm_ray.experiment import PREDICTIONS, output_dir, run_experiment
from slm_ray.store.run_folder import InputsChanged, read_predictions

MODES = ["no_context", "oracle_context", "retriever_context"]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_writes_every_file(mode: str, make_config) -> None:
    cfg = make_config("model=tiny_qwen3", "dataset.limit=12", f"experiment_mode={mode}", "retriever.k=2")
    results = run_experiment(cfg, show_progress=False)
    out = output_dir(cfg)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json", "inputs.json", "memory_usage.json",
                                                     PREDICTIONS, "results.json", "run.log", "segments.json"]
    rows = read_predictions(out / PREDICTIONS)
    assert [r["id"] for r in sorted(rows, key=lambda r: int(r["id"][3:]))] == [f"nq-{i}" for i in range(12)]
    row = rows[0]
    assert set(row) >= {"id", "question", "answers", "contexts", "prediction", "metrics"}
    expected_contexts = {"no_context": None, "oracle_context": 1, "retriever_context": 2}[mode]
    assert (row["contexts"] if row["contexts"] is None else len(row["contexts"])) == expected_contexts
    assert ("retrieval_recall" in results["metrics"]) == (mode == "retriever_context")
    recall = results["metrics"]["token_recall"]
    assert recall["n"] == 12 and recall["ci_low"] <= recall["mean"] <= recall["ci_high"]
    assert results["throughput"]["examples_per_second"] > 0 and results["versions"]["torch"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    memory = json.loads((out / "memory_usage.json").read_text())
    assert memory["components"]["model"]["peak_rss_mb"] > 0 and memory["timeline"]
    if mode == "retriever_context":
        assert memory["components"]["retriever"]["peak_rss_mb"] > 0
    assert "examples" in (out / "run.log").read_text()


def test_an_interrupted_run_resumes_without_duplicates(make_config) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=20", "experiment_mode=oracle_context")
    full = run_experiment(cfg, show_progress=False)
    path = output_dir(cfg) / PREDICTIONS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])  # killed mid-write
    (output_dir(cfg) / "results.json").unlink()
    resumed = run_experiment(cfg, show_progress=False)
    ids = [r["id"] for r in read_predictions(path)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 20
    assert resumed["metrics"] == full["metrics"]


def test_a_finished_run_is_not_generated_again(make_config, monkeypatch) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=5")
    first = run_experiment(cfg, show_progress=False)
    import slm_ray.experiment as experiment

    monkeypatch.setattr(experiment, "build_generator", lambda cfg: pytest.fail("model loaded again"))
    again = run_experiment(cfg, show_progress=False)
    assert again["metrics"] == first["metrics"] and again["model_info"] == first["model_info"]


def test_same_name_with_another_config_is_refused(make_config) -> None:
    run_experiment(make_config("model=tiny_llama", "dataset.limit=3", "experiment.name=x"), show_progress=False)
    with pytest.raises(InputsChanged, match="other inputs: model.architecture: 'llama' -> 'qwen3'"):
        run_experiment(make_config("model=tiny_qwen3", "dataset.limit=3", "experiment.name=x"), show_progress=False)


def test_a_bad_dataset_leaves_no_output_folder(make_config, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n{broken\n')
    cfg = make_config("model=tiny_llama", "dataset=file", f"dataset.path={bad}")
    with pytest.raises(Exception, match="malformed JSON line"):
        run_experiment(cfg, show_progress=False)
    assert not output_dir(cfg).exists()


def test_progress_callback_streams_running_metrics(make_config) -> None:
    seen: list[dict] = []
    run_experiment(make_config("model=tiny_llama", "dataset.limit=9"), progress=seen.append, show_progress=False)
    assert seen and seen[-1]["examples_done"] == 9 and "running_token_recall" in seen[-1]


FAKE_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEKEYFORTEST1", "AWS_SECRET_ACCESS_KEY": "fakeSecretValue/abc123XYZ",
                "CLEARML_API_SECRET_KEY": "fakeClearmlSecret987"}


def test_clearml_offline_session_holds_params_and_scalars_without_secrets(make_config, monkeypatch, tmp_path) -> None:
    for name, value in FAKE_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CLEARML_API_ACCESS_KEY", raising=False)  # half the credentials: still offline
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))
    cfg = make_config("model=tiny_llama", "dataset.limit=6", "tracker=clearml", "tracker.project=slm-ray-tests")
    started = time.perf_counter()
    run_experiment(cfg, show_progress=False)
    assert time.perf_counter() - started < 60
    sessions = list((tmp_path / "clearml").rglob("offline-*.zip"))
    assert len(sessions) == 1
    with zipfile.ZipFile(sessions[0]) as archive:
        blob = "\n".join(archive.read(n).decode("utf-8", "ignore") for n in archive.namelist())
    assert "token_recall" in blob and "tiny_llama" in blob
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    for path in written:
        text = path.read_bytes().decode("utf-8", "ignore")
        for value in FAKE_SECRETS.values():
            assert value not in text, path
    assert value not in blob
    assert "clearml" in (output_dir(cfg) / "run.log").read_text().lower() or os.environ.get("CI")


def test_run_with_several_values_keeps_the_model_for_new_decoding_settings(tmp_path: Path) -> None:
    """``python -m slm_ray.run model.temperature=0,0.5`` loads the model once; other weights load anew."""
    from slm_ray.composition import compose_config
    from slm_ray.run import KeepLoaded

    def config(*overrides: str):
        return compose_config(["model=tiny_llama", f"experiment.cache_dir={tmp_path}", *overrides])

    keep = KeepLoaded()
    first = keep(config("model.temperature=0.0"))
    assert keep(config("model.temperature=0.5", "model.max_new_tokens=4")) is first
    assert keep(config("model.dtype=bfloat16")) is not first
