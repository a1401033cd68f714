"""Logging of slm_ray's processes, and the records of Ray actors as clean lines on a sweep's console.

An actor (a Tune trial, a retriever, a prepare task) writes every ``slm_ray`` record to its stderr
as one marked line, ``[slm_ray step|info|warning|error SOURCE] message``. Ray's own log path carries
worker output to the driver (``log_to_driver``); the sweep's driver replaces Ray's printer with
``LineSorter``: a marked step of long work (``extra=STEP``: model load, GGUF dequantisation, index
build) or warning becomes one console line, everything else (other records, tqdm, library warnings,
tracebacks, Ray's own ``(raylet)`` lines) goes to ``sweep.log`` only, without colour codes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

#: ``log.info(..., extra=STEP)``: this record is one step of long work, worth a console line.
STEP = {"step": True}
#: ``log.info(..., extra=FILE_ONLY)``: for run.log and sweep.log, not the console (where a progress
#: bar already says it).
FILE_ONLY = {"file_only": True}
#: Libraries whose INFO records are noise on a console.
NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "faiss.loader", "sentence_transformers", "clearml", "bm25s")

_MARKED = re.compile(r"^\[slm_ray (step|info|warning|error) ([^\]]+)\] (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def not_file_only(record: logging.LogRecord) -> bool:
    """A console handler's filter: drops ``FILE_ONLY`` records."""
    return not getattr(record, "file_only", False)


def setup_logging(debug: bool) -> None:
    """Records to stderr as ``LEVEL logger: message``; libraries' chatter kept at WARNING."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not_file_only not in handler.filters:
            handler.addFilter(not_file_only)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _MarkedLines(logging.Formatter):
    """One marked line per record (the first line of a multi-line message; the rest follows plain)."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        kind = "step" if getattr(record, "step", False) else record.levelname.lower()
        kind = kind if kind in ("step", "info", "warning", "error") else "error" if record.levelno > 40 else "info"
        text = super().format(record)
        return f"[slm_ray {kind} {self.source}] {text}"


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker (an actor or task), not a driver or a plain test process."""
    if "ray" not in sys.modules:
        return False
    try:
        from ray._private.worker import WORKER_MODE, global_worker
    except ImportError:
        return False
    return getattr(global_worker, "mode", None) == WORKER_MODE


def setup_actor_logging(source: str) -> None:
    """Logging for a Ray actor or task: ``slm_ray`` records as marked lines on its stderr. Nothing
    outside a Ray worker (a test that builds an actor's class directly)."""
    if not in_ray_worker():
        return
    package = logging.getLogger("slm_ray")
    package.setLevel(logging.DEBUG if os.environ.get("SLM_RAY_DEBUG") == "1" else logging.INFO)
    for handler in list(package.handlers):
        if isinstance(handler.formatter, _MarkedLines):
            package.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MarkedLines(source))
    package.addHandler(handler)
    package.propagate = False
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def plain(line: str) -> str:
    """A log line without terminal colour codes."""
    return _ANSI.sub("", line).rstrip()


class LineSorter:
    """The driver's printer of worker output (Ray's ``log_to_driver`` batches): steps and warnings to
    ``show``, every line to ``keep`` (sweep.log)."""

    def __init__(self, show: Callable[[str], None], keep: Callable[[str], None]):
        self.show = show
        self.keep = keep

    def __call__(self, batch: dict[str, Any]) -> None:
        if batch.get("pid") == "autoscaler":  # its status table every few seconds; Ray shows only events too
            batch = {**batch, "lines": [line for line in batch.get("lines") or [] if ":event_summary:" in line]}
        who = batch.get("actor_name") or batch.get("task_name") or ""
        origin = f"({who} pid={batch.get('pid')})".replace("( ", "(")
        for raw in batch.get("lines") or []:
            line = plain(raw)
            if not line:
                continue
            marked = _MARKED.match(line)
            if marked is None:
                self.keep(f"{origin} {line}")
                continue
            kind, source, message = marked.groups()
            text = f"  [{source}] {message}"
            if kind in ("step", "warning", "error"):
                self.show(text)
            else:
                self.keep(text)


@contextmanager
def worker_output_to(sorter: LineSorter) -> Iterator[None]:
    """Print worker output, and Ray's error messages (``(raylet)`` lines), through ``sorter`` instead
    of Ray's printer until the block ends. Where this Ray has no such hooks its printer stays.

    Ray offers no public API to format or filter what ``log_to_driver`` prints (only its prefix,
    through an actor's ``__repr__``): its dispatcher of worker output and the printer its error
    listener calls are the places to do it.
    """
    try:
        from ray._private import worker
    except ImportError:
        yield
        return
    dispatcher = worker.global_worker_stdstream_dispatcher
    saved_handlers, saved_printer = list(dispatcher.handlers), worker.print_to_stdstream
    dispatcher.handlers = [(name, h) for name, h in saved_handlers if name != "ray_print_logs"] + [("slm_ray", sorter)]
    worker.print_to_stdstream = lambda data, ignore_prefix=False: sorter(data)
    try:
        yield
    finally:
        dispatcher.handlers = saved_handlers
        worker.print_to_stdstream = saved_printer


@contextmanager
def without_loading_bars() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a model or encoder loads: a run says what it
    loads in its own log lines, and a bar's carriage returns garble the console and the logs."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
