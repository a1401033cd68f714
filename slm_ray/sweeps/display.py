"""What a sweep's driver shows: its own lines, the actors' steps, one live status on a terminal.

On a terminal the sweep keeps one status line at the bottom (trials done / running / failed, with
tqdm's elapsed time and ETA) and prints events above it; elsewhere (CI, ``nohup``, a pipe) it prints
plain lines only. Everything printed, the actors' output (``slm_ray.logs.LineSorter``) and Ray's and
Tune's own log records go to ``sweep.log`` in the sweep folder, so the console can stay short
without losing anything.

The driver has one console at a time (``ACTIVE``): Tune pickles its callbacks (``events.py``), so
they reach the console through this module.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator

#: Longest console line; longer ones (a long path, an error message) are cut, in full in sweep.log.
MAX_LINE = 200


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class SweepConsole:
    """The driver's console and sweep.log for one sweep run."""

    def __init__(self, live: bool | None = None, secrets: set[str] | None = None):
        self.write_fault: str | None = None  # the one line of a write fault under the sweep folder
        self.secrets = set(secrets or ())  # masked in every line, with the environment's (slm_ray.redaction)
        self.live = sys.stderr.isatty() if live is None else live
        self.pending: list[str] = []  # lines before sweep.log can be written (the folder may not exist yet)
        self.file: IO[str] | None = None
        self.bar: Any = None
        self.running = 0
        self.failed = 0
        self.speed: dict[str, float] = {}

    # -- sweep.log ---------------------------------------------------------------------------

    def attach_file(self, path: Path) -> None:
        """Start writing sweep.log (appending: a resumed sweep keeps the earlier runs' lines)."""
        if self.file is None and self.write_fault is None:
            try:
                self.file = open(path, "a", encoding="utf-8")
            except OSError as exc:
                note_write_fault(path.parent, exc)
                return
            pending, self.pending = self.pending, []
            for text in pending:
                self._write(text)

    def log_only(self, text: str) -> None:
        from slm_ray.redaction import redact

        stamped = f"{_stamp()} {redact(text, self.secrets)}"
        if self.file is None:
            self.pending.append(stamped)
        else:
            self._write(stamped)

    def _write(self, text: str) -> None:
        """One line into sweep.log; on a full or read-only disk, sweep.log stops and the sweep ends."""
        assert self.file is not None
        try:
            self.file.write(text + "\n")
            self.file.flush()
        except OSError as exc:
            folder = Path(self.file.name).parent
            self.file = None
            note_write_fault(folder, exc)

    # -- console -----------------------------------------------------------------------------

    def line(self, text: str) -> None:
        """A console line (cut to MAX_LINE characters), and the whole of it in sweep.log."""
        from slm_ray.redaction import redact

        self.log_only(text)
        text = redact(text, self.secrets)
        shown = text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + "..."
        if self.bar is not None:
            self.bar.write(shown, file=sys.stdout)
        else:
            print(shown, flush=True)

    def progress(self, text: str, trial: str, speed: float) -> None:
        """Running progress: a line where there is no live status, else a figure in the status."""
        self.speed[trial] = speed
        if self.bar is None:
            self.line(text)
        else:
            self.log_only(text)
            self._refresh()

    def start_status(self, total: int) -> None:
        """The live status line (only on a terminal)."""
        if not self.live or self.bar is not None:
            return
        import shutil

        from tqdm.auto import tqdm

        # A terminal that reports no size (a bare pty) would get a bar of width 0: use COLUMNS or 80.
        reported = os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
        width = {"dynamic_ncols": True} if reported else {"ncols": shutil.get_terminal_size().columns}
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr, **width,
                        bar_format="{desc}: {n_fmt}/{total_fmt} done{postfix} [{elapsed}<{remaining}]")
        self._refresh()

    def trial_started(self) -> None:
        self.running += 1
        self._refresh()

    def trial_finished(self, trial: str, ok: bool) -> None:
        self.running = max(0, self.running - 1)
        self.failed += 0 if ok else 1
        self.speed.pop(trial, None)
        if self.bar is not None:
            self.bar.update(1)
        self._refresh()

    def _refresh(self) -> None:
        if self.bar is None:
            return
        parts = [f"{self.running} running"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.speed:
            parts.append(f"{sum(self.speed.values()):.1f} ex/s")
        self.bar.set_postfix_str(", ".join(parts), refresh=True)

    def close_status(self) -> None:
        """The status line goes (before Ray shuts down)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_status()
        if self.file is not None:
            self.file.close()
            self.file = None


ACTIVE: SweepConsole | None = None


def note_write_fault(folder: Path, exc: OSError) -> None:
    """A write under the sweep folder failed (full or read-only disk): the sweep stops with that one
    line once Tune has stopped (``events.StopOnWriteFault``). Any other OSError is raised."""
    from slm_ray.errors import unwritable
    from slm_ray.store.run_folder import OUTPUT_SETTING

    error = unwritable(folder, exc, OUTPUT_SETTING)
    if error is None or ACTIVE is None:
        raise exc
    ACTIVE.write_fault = ACTIVE.write_fault or str(error)


def echo(text: str) -> None:
    """A driver line: through the active console, else a plain print."""
    if ACTIVE is not None:
        ACTIVE.line(text)
    else:
        print(text, flush=True)


class _ToSweepLog(logging.Handler):
    """Ray's and Tune's records, into sweep.log."""

    def emit(self, record: logging.LogRecord) -> None:
        if ACTIVE is not None:
            try:
                ACTIVE.log_only(f"{record.levelname} {record.name}: {self.format(record)}")
            except Exception:
                pass


@contextmanager
def active(console: SweepConsole) -> Iterator[SweepConsole]:
    """Make ``console`` the driver's console while the sweep runs."""
    global ACTIVE
    previous, ACTIVE = ACTIVE, console
    try:
        yield console
    finally:
        console.close()
        ACTIVE = previous


@contextmanager
def ray_logs_to_sweep_log() -> Iterator[None]:
    """Ray's and Tune's python loggers write to sweep.log, not the console, until the block ends (their
    trial tracebacks and ``Tuner.restore`` hints contradict the sweep's own one-line messages)."""
    logger = logging.getLogger("ray")
    saved = (list(logger.handlers), logger.propagate)
    logger.handlers, logger.propagate = [_ToSweepLog()], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved

