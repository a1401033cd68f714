"""ClearML with credentials but no reachable server: the run falls back to offline at once, says so
in one warning naming the server, and keeps a session zip to import later. Without the fallback,
ClearML retried the server for minutes before the first question."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HANG_GUARD_S = 90  # the run itself takes seconds; longer means ClearML is retrying the server


def _run_tiny(tmp_path: Path, shared_cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "slm_ray.run", "model=tiny_llama", "tracker=clearml", "dataset.limit=3",
               "experiment.bootstrap_resamples=50", f"experiment.output_dir={tmp_path / 'out'}",
               f"experiment.cache_dir={shared_cache}"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    base.update({"HF_HUB_OFFLINE": "1", "CLEARML_CACHE_DIR": str(tmp_path / "clearml"),
                 "CLEARML_CONFIG_FILE": str(tmp_path / "no-clearml.conf"), **env})
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, env=base, capture_output=True, text=True, timeout=HANG_GUARD_S)
    print(f"run with an unreachable ClearML server: {time.monotonic() - started:.1f} s")
    return done


def _assert_offline_fallback(done: subprocess.CompletedProcess, tmp_path: Path, host: str, why: str) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "is not reachable" in line]
    assert warnings == [f"WARNING slm_ray.tracking: ClearML server {host} is not reachable ({why}): running "
                        "offline instead; the session zip can be imported into the server later"]
    zips = list((tmp_path / "clearml").rglob("offline-*.zip"))
    assert len(zips) == 1
    assert f"ClearML ran offline (server {host} not reachable); session saved at {zips[0]}" in done.stderr
    assert "import_offline_session" in done.stderr
    results = json.loads(next((tmp_path / "out").glob("*/results.json")).read_text())
    assert results["n_examples"] == 3


CREDENTIALS = {"CLEARML_API_ACCESS_KEY": "fake-access", "CLEARML_API_SECRET_KEY": "fake-secret"}


def test_closed_server_port_falls_back_to_offline(tmp_path: Path, shared_cache: Path, closed_port: int) -> None:
    host = f"http://127.0.0.1:{closed_port}"
    done = _run_tiny(tmp_path, shared_cache, {**CREDENTIALS, "CLEARML_API_HOST": host})
    _assert_offline_fallback(done, tmp_path, host, "connection refused")


def test_server_that_never_answers_falls_back_to_offline(tmp_path: Path, shared_cache: Path,
                                                        silent_port: int) -> None:
    host = f"http://127.0.0.1:{silent_port}"
    done = _run_tiny(tmp_path, shared_cache, {**CREDENTIALS, "CLEARML_API_HOST": host})
    _assert_offline_fallback(done, tmp_path, host, "no answer within 3 s")


def test_server_of_clearml_conf_is_the_one_probed(tmp_path: Path, shared_cache: Path, closed_port: int) -> None:
    """Credentials and api_server from a clearml.conf, nothing in the environment."""
    host = f"http://127.0.0.1:{closed_port}"
    conf = tmp_path / "clearml.conf"
    conf.write_text('api {\n  api_server: "%s"\n  credentials {"access_key": "fake-access", '
                    '"secret_key": "fake-secret"}\n}\n' % host)
    done = _run_tiny(tmp_path, shared_cache, {"CLEARML_CONFIG_FILE": str(conf)})
    _assert_offline_fallback(done, tmp_path, host, "connection refused")


def test_a_server_that_answers_is_used(http_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP answer counts as reachable (ClearML then reports online); nothing falls back."""
    from slm_ray.tracking.clearml import api_server_host, unreachable_server

    monkeypatch.setenv("CLEARML_API_HOST", f"http://127.0.0.1:{http_port}/")
    assert api_server_host() == f"http://127.0.0.1:{http_port}"
    assert unreachable_server() is None
