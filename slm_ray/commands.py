"""The ``slm-ray`` command: one entry point for every tool, as ``python -m slm_ray.<tool>`` also runs it.

    slm-ray run [overrides]            one experiment (or a few in a row with key=a,b / -m)
    slm-ray sweep SWEEP.yaml [...]     every trial of a sweep file, on Ray
    slm-ray report SWEEP_FOLDER        rebuild a sweep's summary; --verify re-checks every number
    slm-ray compare A B                paired comparison of two runs (or SWEEP_FOLDER TRIAL_A TRIAL_B)
    slm-ray fetch [SWEEP.yaml] [...]   download every model, dataset and encoder a plan needs
    slm-ray index [overrides]          build the retrieval indexes runs and sweeps will load (big corpora)

``slm-ray COMMAND --help`` explains a command.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: command -> module whose ``main(argv)`` runs it
COMMANDS = {"run": "slm_ray.run", "sweep": "slm_ray.sweep", "report": "slm_ray.report",
            "compare": "slm_ray.compare", "fetch": "slm_ray.fetch", "index": "slm_ray.index"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        from slm_ray.cli import USAGE_EXIT, print_help

        return print_help(__doc__ or "") if args else (print_help(__doc__ or "") or USAGE_EXIT)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r} (valid: {', '.join(COMMANDS)}; slm-ray --help explains them)",
              file=sys.stderr)
        return 2
    try:
        code = int(importlib.import_module(COMMANDS[command]).main(rest))
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
        return code
    except BrokenPipeError:  # `slm-ray sweep --list | head`: the reader left; as run_cli, no traceback
        from slm_ray.cli import reader_left

        return reader_left()


if __name__ == "__main__":
    sys.exit(main())
