"""Log records of Ray actors, relayed to the sweep's driver as clean lines.

A sweep's driver starts Ray with ``log_to_driver=False``: worker output (tqdm bars, library
warnings, tracebacks) stays in Ray's worker log files instead of being interleaved on the console
with ``(Actor pid=...)`` prefixes. What the user should see of an actor's work reaches the driver
through a small named actor, the *board*: every ``slm_ray`` log record of an actor is posted there,
and the driver prints the ones marked as a step of long work (``extra=STEP``: model load, GGUF
dequantisation, index build and its encoding progress) and every warning, and writes all of them
to the sweep's ``sweep.log``.

Relaying is a nicety: when no board exists (an actor outside a sweep, a Ray the tests started),
records go only to the actor's own stderr, as before.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

#: ``log.info(..., extra=STEP)``: this record is one step of long work, worth a console line.
STEP = {"step": True}
#: ``log.info(..., extra=FILE_ONLY)``: for run.log and sweep.log, not the console (where a progress
#: bar already says it).
FILE_ONLY = {"file_only": True}


def not_file_only(record: logging.LogRecord) -> bool:
    """A console handler's filter: drops ``FILE_ONLY`` records."""
    return not getattr(record, "file_only", False)
#: The board's actor name, in the namespace of the sweep's Ray job (each sweep run has its own).
BOARD_NAME = "slm_ray-board"
_RETRY_LOOKUP_S = 5.0


class Board:
    """The body of the board actor: records posted by actors, drained by the driver."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def post(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def drain(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records


class BoardHandler(logging.Handler):
    """Posts each record to the board of this actor's Ray namespace (fire and forget)."""

    def __init__(self, source: str):
        super().__init__(logging.INFO)
        self.source = source
        self._board: Any = None
        self._looked_up = -_RETRY_LOOKUP_S

    def _find_board(self) -> Any:
        if self._board is None and time.monotonic() - self._looked_up >= _RETRY_LOOKUP_S:
            self._looked_up = time.monotonic()
            if not _in_ray():
                return None  # ray.get_actor would start a Ray of its own
            import ray

            try:
                self._board = ray.get_actor(BOARD_NAME, namespace=ray.get_runtime_context().namespace)
            except ValueError:  # no board in this namespace (yet)
                self._board = None
        return self._board

    def emit(self, record: logging.LogRecord) -> None:
        try:
            board = self._find_board()
            if board is not None:
                board.post.remote({"source": self.source, "level": record.levelno, "logger": record.name,
                                   "message": record.getMessage(), "step": bool(getattr(record, "step", False)),
                                   "time": record.created})
        except Exception:  # the relay must never break the work; the record is in the actor's own log
            self._board = None


def _in_ray() -> bool:
    """Whether this process is connected to Ray (an actor is; a test that builds the class directly is not)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def setup_actor_logging(source: str | None = None) -> None:
    """Logging for a Ray actor: records to its stderr (Ray's worker log file) and to the board."""
    from slm_ray.cli import setup_logging

    setup_logging(os.environ.get("SLM_RAY_DEBUG") == "1")
    package = logging.getLogger("slm_ray")
    if not _in_ray() or any(isinstance(h, BoardHandler) for h in package.handlers):
        return
    if source is None:
        try:
            import ray

            source = ray.get_runtime_context().get_actor_name() or "worker"
        except Exception:
            source = "worker"
    package.addHandler(BoardHandler(source))
