"""The local Ray of a sweep dies with its driver, even after ``kill -9``.

``ray.init()`` starts Ray's processes as children of the driver. When the driver ends normally it
shuts them down; when it is killed, the GCS, raylet and workers notice and go, but Ray's dashboard
agent and runtime-env agent were seen to outlive it by more than a minute (about 125 MB).

So a sweep that starts its own Ray also starts this small watcher, in a session of its own (Ctrl-C
in the terminal does not reach it). It learns the driver's process tree every second and holds the
read end of a pipe whose write end only the driver has: when the pipe closes without the driver
saying "done" (the driver died), it sends SIGTERM to every process of the last tree that is still
alive (and their children), then SIGKILL after a grace period.

    python -m slm_ray.sweeps.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import IO, Any

DONE = b"done\n"
SNAPSHOT_EVERY_S = 1.0
GRACE_S = 3.0


class Reaper:
    """The driver's end: start the watcher, tell it when Ray was shut down properly."""

    def __init__(self, process: subprocess.Popen[bytes]):
        self.process = process

    @classmethod
    def start(cls) -> "Reaper":
        process = subprocess.Popen([sys.executable, "-m", "slm_ray.sweeps.reaper", str(os.getpid())],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, close_fds=True)
        return cls(process)

    def done(self) -> None:
        """Ray was shut down: the watcher leaves everything alone and exits."""
        stdin: IO[bytes] | None = self.process.stdin
        try:
            if stdin is not None:
                stdin.write(DONE)
                stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def _tree(root: Any, me: int) -> dict[int, float]:
    """pid -> create time of every process under ``root`` (but this watcher)."""
    import psutil

    found = {}
    try:
        for child in root.children(recursive=True):
            if child.pid != me:
                try:
                    found[child.pid] = child.create_time()
                except psutil.Error:
                    continue
    except psutil.Error:
        pass
    return found


def _alive(known: dict[int, float]) -> list[Any]:
    """The processes of ``known`` that still run (same pid *and* start time), with their children."""
    import psutil

    alive: dict[int, Any] = {}
    for pid, created in known.items():
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - created) > 0.01:
                continue  # the pid was reused by another process
            alive[pid] = process
            for child in process.children(recursive=True):
                alive.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(alive.values())


def reap(known: dict[int, float], grace_s: float = GRACE_S) -> int:
    """SIGTERM, then SIGKILL, what is left of ``known``; the number of processes stopped."""
    import psutil

    survivors = _alive(known)
    for process in survivors:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(survivors, timeout=grace_s)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(still, timeout=grace_s)
    return len(survivors)


def watch(driver_pid: int, pipe: IO[bytes]) -> int:
    """Follow the driver's tree until the pipe closes; reap it unless the driver said it was done."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return 0
    me = os.getpid()
    known: dict[int, float] = {}
    received = b""
    while True:
        known.update(_tree(driver, me))
        ready, _, _ = select.select([pipe], [], [], SNAPSHOT_EVERY_S)
        if ready:
            chunk = os.read(pipe.fileno(), 64)
            if chunk:
                received += chunk
                continue
            if received.startswith(DONE):
                return 0
            reap(known)
            return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(watch(int(sys.argv[1]), sys.stdin.buffer))
