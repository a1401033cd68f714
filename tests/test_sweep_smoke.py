"""The shipped smoke sweep through the real command line: local Ray, the real SmolLM2-135M, both
retrievers. The corpus is swapped for a small one (the built-in corpus's dense index takes minutes
to build on two cores the first time) and the limit lowered, to keep the test near a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_sweep_command(sweep_env: Path, sweep_cache_dir: Path, small_corpus: Path) -> None:
    command = [str(Path(sys.executable).parent / "slm-ray"), "sweep", str(REPO / "sweeps" / "smoke.yaml"),
               "dataset.limit=3", "corpus=file", f"corpus.path={small_corpus}",
               f"experiment.cache_dir={sweep_cache_dir}", "--dashboard"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(command, cwd=sweep_env, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Ray dashboard: http" in done.stdout
    sweep_dir = sweep_env / "outputs" / "sweeps" / "smoke"
    # The console a user reads: no worker output, no bars, short lines, ending with the summary's path.
    lines = (done.stdout + done.stderr).splitlines()
    assert not [line for line in lines if "pid=" in line or "%|" in line or "WARNING" in line], lines
    assert max(map(len, lines)) <= 200 and len(lines) <= 12 * 4 + 20, lines
    assert any("[generator-" in line and "loaded smollm2_135m_gguf" in line for line in lines), lines
    assert done.stdout.splitlines()[-1] == f"summary: {sweep_dir / 'summary.md'}"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"ok": 12}
    for name in ("summary.csv", "summary.md", "token_recall.png", "memory.png", "throughput.png", "sweep_stats.json"):
        assert (sweep_dir / name).stat().st_size > 0
    stats = json.loads((sweep_dir / "sweep_stats.json").read_text())["last_run"]
    assert sorted(a["type"] for a in stats["retriever_actors"]) == ["bm25", "dense"]
    assert all(n == 1 for loads in stats["model_loads_per_actor"].values() for n in loads.values())
    real = next(r for r in summary["trials"] if r["trial"] == "smollm2_135m_gguf-nq-oracle_context")
    assert real["n_examples"] == 3 and real["model_peak_rss_mb"] > 0
