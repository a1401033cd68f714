"""Rebuild a sweep's summary from its trial folders.

    python -m slm_ray.report outputs/sweeps/sizes_500

Reads trials/*/results.json and trial.json (plus sweep.json and sweep_stats.json when present) and
writes summary.csv, summary.json, summary.md and the plots (token_recall.png, memory.png,
throughput.png) into the sweep folder, then prints the Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from slm_ray.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_report, __doc__ or "", argv)


def _report(arguments: list[str], print_config: bool) -> int:
    from slm_ray.errors import SlmRayError
    from slm_ray.sweeps.summary import write_summary

    if len(arguments) != 1:
        raise SlmRayError("give one sweep folder: python -m slm_ray.report outputs/sweeps/<name>")
    folder = Path(arguments[0])
    if not folder.is_dir():
        raise SlmRayError(f"sweep folder not found: {folder}")
    if not (folder / "sweep.json").is_file() and not (folder / "trials").is_dir():
        raise SlmRayError(f"{folder} is not a sweep folder (no sweep.json and no trials/)")
    summary = write_summary(folder)
    print((folder / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(summary['files'] + summary['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
