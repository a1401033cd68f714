"""An installed wheel works from any folder: the config tree and the sweep files ship in the package.

The wheel is built from a copy of the repository (the repository itself stays untouched) and
installed into a folder of its own; the commands then run from an empty folder outside the repo,
with that folder first on the import path, so ``slm_ray`` is the wheel's and not the editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", ".cache", "outputs", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "bench", "tests", "docs")


def test_a_built_wheel_runs_and_plans_from_an_empty_folder(tmp_path: Path, shared_cache: Path) -> None:
    source, dist, site, work = (tmp_path / name for name in ("source", "dist", "site", "empty"))
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True)
    [wheel] = dist.glob("slm_ray-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CLEARML_CACHE_DIR": str(tmp_path / "clearml")}

    def slm_ray(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(site / "bin" / "slm-ray"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import slm_ray; print(slm_ray.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where

    listed = slm_ray("sweep", "--list")
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()} >= {"smoke", "size_comparison"}
    planned = slm_ray("sweep", "smoke", "--cfg")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("sweep smoke: 12 trials -> outputs/sweeps/smoke (from ")
    assert str(site) in planned.stdout.splitlines()[0]  # the wheel's own sweep file

    done = slm_ray("run", "dataset.limit=5", "model=tiny_llama", "tracker=none", f"experiment.cache_dir={shared_cache}")
    assert done.returncode == 0, done.stderr
    [results] = (work / "outputs").rglob("results.json")
    assert json.loads(results.read_text())["metrics"]["token_recall"]["n"] == 5
    assert not (work / "outputs" / "sweeps").exists()
