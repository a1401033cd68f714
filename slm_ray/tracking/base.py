"""The tracker interface, the no-op tracker, and secret masking shared by every sink."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

SECRET_KEY = re.compile(r"(?:^|_)(secret|password|token|access_key|api_key|credentials?)(?:$|_)", re.IGNORECASE)
MASK = "***"


def mask_secrets(data: Any) -> Any:
    """A copy of nested config data with values under secret-looking keys replaced by ``***``."""
    if isinstance(data, Mapping):
        return {k: (MASK if SECRET_KEY.search(str(k)) and v not in (None, "") else mask_secrets(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_secrets(v) for v in data]
    return data


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
