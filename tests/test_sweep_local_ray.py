"""Without --address a sweep starts a Ray of its own: it neither joins nor hangs on the record of a
cluster that `ray start` left on this machine (a gone cluster made the driver retry for minutes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_a_stale_record_of_a_gone_cluster_neither_hangs_nor_is_joined(sweep_env: Path, sweep_cache_dir: Path) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("192.0.2.2:6399")  # a TEST-NET address: nobody
        sweep = sweep_env / "s.yaml"
        sweep.write_text(f"name: alone\noverrides: [tracker=none, dataset.limit=2, experiment.cache_dir={sweep_cache_dir}]\n"
                         "grid: {model: [tiny_llama]}\n")
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_tmp)}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-m", "slm_ray.sweep", str(sweep)], cwd=sweep_env, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        summary = json.loads((sweep_env / "outputs" / "sweeps" / "alone" / "summary.json").read_text())
        assert summary["counts"] == {"ok": 1}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
