"""Experiment trackers: ClearML, or none."""

from __future__ import annotations

from typing import Any

from slm_ray.tracking.base import NullTracker, Tracker


def build_tracker(tracker_cfg: Any, task_name: str, tags: list[str]) -> Tracker:
    """The tracker the config asks for (``tracker=none`` gives one that does nothing)."""
    if tracker_cfg.type == "none":
        return NullTracker()
    from slm_ray.tracking.clearml import ClearMLTracker

    return ClearMLTracker(tracker_cfg.project, task_name, [*tracker_cfg.tags, *tags], tracker_cfg.offline)
