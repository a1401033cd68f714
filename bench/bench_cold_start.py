"""The shipped smoke sweep with empty caches, then at once with warm ones: what a new user's first
sweep costs over every later one.

    python bench/bench_cold_start.py                 # sweeps/smoke.yaml, 10 questions per trial
    python bench/bench_cold_start.py --limit 20 --json bench/results/cold_start.json

Both runs are fresh sweeps (their own output folders) in fresh processes, timed from process start
to exit; the second one shares the first one's cache folder (indexes, the dequantised SmolLM2,
cached retrievals), which is all that "warm" means. Prints both wall times and cold / warm (the
target is <= 1.5), and the CPU the figures hold for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed_sweep(workdir: Path, name: str, cache: Path, limit: int) -> float:
    command = [str(Path(sys.executable).parent / "slm-ray"), "sweep", str(REPO / "sweeps" / "smoke.yaml"),
               f"dataset.limit={limit}", f"experiment.cache_dir={cache}", "--name", name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (workdir / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{name} sweep failed (exit {done.returncode}): see {workdir / f'{name}.log'}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=10, help="questions per trial (the smoke sweep's own: 10)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slm-ray-cold-"))
    cache = workdir / "cache"
    cold = timed_sweep(workdir, "cold", cache, args.limit)
    warm = timed_sweep(workdir, "warm", cache, args.limit)
    result = {"limit": args.limit, "cold_s": round(cold, 1), "warm_s": round(warm, 1),
              "cold_over_warm": round(cold / warm, 2), "cpu": cpu_model(), "cores": os.cpu_count(), "workdir": str(workdir)}
    print(f"smoke sweep, {args.limit} questions per trial, {result['cpu']} ({result['cores']} cores): "
          f"cold {cold:.1f}s, warm {warm:.1f}s, cold / warm {cold / warm:.2f} (target <= 1.5)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
