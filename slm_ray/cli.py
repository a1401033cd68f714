"""What every entry point shares: flags, logging, and turning user errors into one line each + exit 2."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable, Sequence

USAGE_EXIT = 2


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "faiss.loader", "sentence_transformers", "clearml", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a user's value) written as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(body: Callable[[list[str], bool], int], doc: str, argv: Sequence[str] | None) -> int:
    """Parse ``--help``/``--debug``/``--cfg``, run ``body(overrides, print_config)``, map errors to exit codes."""
    from slm_ray.errors import SlmRayError

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(doc.strip())
        return 0
    debug = "--debug" in args or os.environ.get("SLM_RAY_DEBUG") == "1"
    print_config = "--cfg" in args
    overrides = [a for a in args if a not in ("--debug", "--cfg")]
    unknown_flags = [a for a in overrides if a.startswith("-")]
    if unknown_flags:
        print(f"error: unknown option {unknown_flags[0]!r} (valid: --help, --debug, --cfg, or key=value overrides)",
              file=sys.stderr)
        return USAGE_EXIT
    setup_logging(debug)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop like Ctrl-C: finished batches stay saved
    try:
        return body(overrides, print_config)
    except SlmRayError as exc:
        if debug:
            raise
        for problem in getattr(exc, "problems", None) or [str(exc) or type(exc).__name__]:  # one line each
            print(f"error: {one_line(problem)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
