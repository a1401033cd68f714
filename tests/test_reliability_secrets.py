"""Secrets planted in the environment or given in a sweep file's overrides never reach a file:
outputs, Tune's folders, the ClearML offline sessions (inside their zips), and the logs of the Ray
session the sweep started."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEPLANTED7Q2X",
    "AWS_SECRET_ACCESS_KEY": "planted/aws+secret-9f8e7d6c5b4a3",
    "CLEARML_API_SECRET_KEY": "planted-clearml-secret-0a1b2c3d",
    "HF_TOKEN": "hf_plantedEnvironmentToken0123",
}
#: Given in the sweep file's overrides (issue 19: it was written in clear into sweep.json and each
#: trial's inputs.json).
OVERRIDE_SECRET = "hf_plantedOverrideToken4567"


def _all_secrets() -> dict[str, str]:
    return {**SECRETS, "+model.chat_template_kwargs.hf_token": OVERRIDE_SECRET}


def _leaks(path: Path, data: bytes, found: list[str]) -> None:
    for name, value in _all_secrets().items():
        if value.encode() in data:
            found.append(f"{name} in {path}")


def _scan(root: Path, found: list[str], since: float = 0.0) -> int:
    scanned = 0
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime < since:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        _leaks(path, data, found)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    _leaks(Path(f"{path}!{member}"), archive.read(member), found)
                    scanned += 1
    return scanned


@pytest.mark.ray
def test_planted_secrets_are_written_nowhere(sweep_env: Path, sweep_cache_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from slm_ray.sweeps.engine import run_sweep
    from slm_ray.sweeps.spec import load_sweep

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    sweep = sweep_env.parent / f"{sweep_env.name}-secrets.yaml"  # the user's own file holds the secret: not scanned
    sweep.write_text(f"""
name: secrets
overrides: [dataset.limit=3, tracker=clearml, tracker.offline=true, "experiment.cache_dir={sweep_cache_dir}",
            experiment.bootstrap_resamples=50, "+model.chat_template_kwargs.hf_token={OVERRIDE_SECRET}"]
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context]
resources: {{cpus: 1}}
max_concurrent_trials: 2
""")
    assert not ray.is_initialized()
    record = run_sweep(load_sweep(sweep), dashboard=False)
    assert record["trials_outcome"] == {"ok": 2, "failed": 0, "not_run": 0}
    assert "hf_token" in (sweep_env / "outputs" / "sweeps" / "secrets" / "sweep.json").read_text()
    zips = list((sweep_env / "clearml").rglob("*.zip"))
    assert len(zips) == 2  # one offline session per trial, scanned inside
    found: list[str] = []
    scanned = _scan(sweep_env, found)
    session = Path(record["ray_session_dir"])  # the logs of the Ray this sweep started, as ray.init named it
    assert session.name.startswith("session_") and (session / "logs").is_dir(), session
    scanned += _scan(session / "logs", found)
    assert scanned > 20
    assert not found, found
