"""ClearML: one Task per experiment, online with credentials and a server that answers, else offline
(a session zip to import later)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from slm_ray.tracking.base import Tracker

log = logging.getLogger("slm_ray.tracking")
CREDENTIAL_VARS = ("CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY")


def has_clearml_credentials() -> bool:
    """Credentials in the environment or a clearml.conf that ClearML would read."""
    if all(os.environ.get(v) for v in CREDENTIAL_VARS):
        return True
    conf = Path(os.environ.get("CLEARML_CONFIG_FILE", Path.home() / "clearml.conf"))
    return conf.is_file() and "secret_key" in conf.read_text(errors="ignore")


def resolve_offline(setting: Any) -> bool:
    if setting in (True, "true"):
        return True
    if setting in (False, "false"):
        return False
    return not has_clearml_credentials()


def api_server_host() -> str:
    """The API server ClearML would talk to: CLEARML_API_HOST, else clearml.conf's api_server, else
    ClearML's default, read by ClearML's own code."""
    from clearml.backend_api.session import Session

    try:
        return Session.get_api_server_host()
    except Exception:  # noqa: BLE001 - an unreadable clearml.conf: ClearML itself reports it later
        return os.environ.get("CLEARML_API_HOST") or Session.default_host


def unreachable_server() -> tuple[str, str] | None:
    """(host, why) when ClearML's API server does not answer within a few seconds, else None.
    Without this check ClearML retries an unreachable server for minutes before the first question."""
    from slm_ray.netcheck import http_problem

    host = api_server_host().rstrip("/")
    problem = http_problem(f"{host}/debug.ping")
    return None if problem is None else (host, problem)


def _forget_inherited_master() -> None:
    """Drop ClearML's "child of task X" marker inherited from another process (a Ray worker started
    by a process that had a Task): with it, ClearML hands this process a do-nothing stub task."""
    for var in ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID"):
        owner = os.environ.get(var, "").split(":")[0]
        if owner and owner != str(os.getpid()):
            del os.environ[var]


class ClearMLTracker(Tracker):
    """Streams to a ClearML Task; ``close`` does not wait on ClearML's reporting subprocess."""

    def __init__(self, project: str, task_name: str, tags: Sequence[str] = (), offline: Any = "auto"):
        from clearml import Task

        # Report from this process: the default subprocess makes task.close() wait ~10 s.
        Task._report_subprocess_enabled = False
        self.offline = resolve_offline(offline)
        self.offline_reason = "no credentials" if offline not in (True, "true") else "tracker.offline=true"
        unreachable = None if self.offline else unreachable_server()
        if unreachable:
            host, why = unreachable
            log.warning("ClearML server %s is not reachable (%s): running offline instead; the session zip "
                        "can be imported into the server later", host, why)
            self.offline, self.offline_reason = True, f"server {host} not reachable"
        Task.set_offline(self.offline)
        _forget_inherited_master()
        # ClearML hooks SIGTERM/SIGINT and then does not exit on SIGTERM: keep the process's own handlers.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.task = Task.init(project_name=project, task_name=task_name, tags=list(tags), reuse_last_task_id=False,
                              auto_connect_frameworks=False, auto_connect_arg_parser=False,
                              auto_resource_monitoring=False, auto_connect_streams=False)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        self.logger = self.task.get_logger()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.task.connect(dict(params), name="config")

    def log_scalars(self, title: str, values: Mapping[str, float], step: int) -> None:
        for series, value in values.items():
            if value is not None:
                self.logger.report_scalar(title=title, series=series, value=float(value), iteration=step)

    def log_final(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            if value is not None:
                self.logger.report_single_value(name, float(value))

    def log_artifact(self, name: str, path: Path) -> None:
        self.task.upload_artifact(name, artifact_object=str(path), wait_on_upload=True)

    def close(self) -> str | None:
        folder = self.task.get_offline_mode_folder() if self.offline else None
        self.task.close()
        if folder is None:
            return None
        session = Path(f"{folder}.zip")
        return (f"ClearML ran offline ({self.offline_reason}); session saved at {session}. Import it into a server "
                f"with: python -c \"from clearml import Task; Task.import_offline_session('{session}')\"")
