"""The tracker interface and the no-op tracker (what a tracker receives is masked by ``slm_ray.redaction``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


class Tracker:
    """Receives a run's parameters, running scalars, final metrics and files. Does nothing itself."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's resolved config (already masked)."""

    def log_scalars(self, title: str, values: Mapping[str, float], step: int) -> None:
        """Running values (metrics, throughput, memory) at ``step`` examples done."""

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Final single values, shown in the compare view."""

    def log_artifact(self, name: str, path: Path) -> None:
        """A result file to keep with the run."""

    def close(self) -> str | None:
        """Finish; returns a note for the user (e.g. where an offline session is), or None."""
        return None


NullTracker = Tracker
