"""What every entry point shares: flags, logging, and turning user errors into one line each + exit 2."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from slm_ray.logs import setup_logging

USAGE_EXIT = 2


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a user's value) written as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops like Ctrl-C: finished batches stay saved, the command says so and exits 130."""
    raise KeyboardInterrupt(f"signal {signum}")


#: What ``--cfg`` prints, as in Hydra: the job's config, Hydra's own, or both.
CFG_CHOICES = ("job", "hydra", "all")


class UsageError(ValueError):
    """A command-line flag that is unknown or lacks its value."""


@dataclass
class Flags:
    """The flags every config-composing entry point shares with Hydra's apps."""

    debug: bool = False
    cfg: str | None = None  # job | hydra | all: print that config and exit
    multirun: bool = False  # -m/--multirun: key=a,b runs each value (without it, too)
    config_dirs: list[str] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)


def parse_flags(args: Sequence[str], hydra_flags: bool) -> Flags:
    """Take the shared flags out of ``args``; what remains are overrides or the command's own."""
    flags = Flags(debug=os.environ.get("SLM_RAY_DEBUG") == "1")
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        name, eq, value = arg.partition("=") if arg.startswith("-") else (arg, "", "")
        if name == "--debug" and not eq:
            flags.debug = True
        elif hydra_flags and name in ("-m", "--multirun") and not eq:
            flags.multirun = True
        elif hydra_flags and name in ("--cfg", "-c"):
            following = items[i + 1] if i + 1 < len(items) else ""
            if not eq and following and _cfg_value(following):
                value, i = following, i + 1
            elif not eq:
                value = "job"  # a bare --cfg, as before: the job's config
            if value not in CFG_CHOICES:
                raise UsageError(f"--cfg {value!r}: expected one of {', '.join(CFG_CHOICES)}")
            flags.cfg = value
        elif hydra_flags and name in ("--config-dir", "-cd"):
            if not eq:
                if i + 1 >= len(items) or items[i + 1].startswith("-"):
                    raise UsageError(f"{name} needs a folder, e.g. {name} my_conf")
                value, i = items[i + 1], i + 1
            if not value:
                raise UsageError(f"{name} needs a folder, e.g. {name} my_conf")
            flags.config_dirs.append(value)
        elif arg.startswith("-"):
            valid = ("--help, --debug, --cfg job|hydra|all, -m/--multirun, --config-dir DIR, or key=value overrides"
                     if hydra_flags else "--help, --debug")
            raise UsageError(f"unknown option {arg!r} (valid: {valid})")
        else:
            flags.rest.append(arg)
        i += 1
    return flags


def _cfg_value(arg: str) -> bool:
    """Whether the word after ``--cfg`` is its value (job, or a typo of it) rather than an override
    (``key=value``), a sweep (a file, or a shipped sweep's name such as ``smoke``) or another flag."""
    import difflib

    return arg in CFG_CHOICES or bool(difflib.get_close_matches(arg, CFG_CHOICES, n=1, cutoff=0.6))


def run_cli(body: Callable[[list[str], Any], int], doc: str, argv: Sequence[str] | None,
            hydra_flags: bool = False) -> int:
    """Parse the shared flags, run ``body(arguments, flags.cfg)``, map errors to exit codes.

    ``hydra_flags``: the command composes configs, so it takes Hydra's ``--cfg``, ``-m`` and
    ``--config-dir`` too. ``body`` gets the remaining arguments and what ``--cfg`` asked for (None
    when absent).
    """
    from slm_ray.errors import SlmRayError

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        return print_help(doc)
    try:
        flags = parse_flags(args, hydra_flags)
        if hydra_flags:
            from slm_ray.composition import use_config_dirs

            use_config_dirs(flags.config_dirs)
    except (UsageError, SlmRayError) as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return USAGE_EXIT
    debug, print_config, overrides = flags.debug, flags.cfg, flags.rest
    setup_logging(debug)
    signal.signal(signal.SIGTERM, raise_interrupt)  # stop like Ctrl-C: finished batches stay saved
    try:
        return body(overrides, print_config)
    except SlmRayError as exc:
        if debug:
            raise
        from slm_ray.redaction import override_secrets, redact

        known = override_secrets(overrides)
        for problem in getattr(exc, "problems", None) or [str(exc) or type(exc).__name__]:  # one line each
            print(f"error: {one_line(redact(problem, known))}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print(interrupted_message(hydra_flags and not print_config), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slm-ray run --cfg | head`: the reader left; say nothing more
        return reader_left()


def interrupted_message(resumable: bool) -> str:
    """What to say when Ctrl-C or a signal stops a command: only a run, a sweep or a download has
    finished work to keep (``--cfg``, ``report`` and ``compare`` had none to save)."""
    if resumable:
        return "interrupted: finished work is saved; run the same command again to resume"
    return "interrupted"


def print_help(doc: str) -> int:
    try:
        print(doc.strip(), flush=True)
    except BrokenPipeError:
        return reader_left()
    return 0


def reader_left() -> int:
    """stdout's reader closed the pipe: point stdout at /dev/null so that exiting does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
