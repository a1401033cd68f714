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
from contextlib import suppress
from typing import IO

import psutil

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


def _descendants(driver: psutil.Process, me: int) -> dict[int, psutil.Process]:
    """Every process under the driver but this watcher (psutil remembers each one's start time, so a
    reused pid is never signalled)."""
    try:
        return {child.pid: child for child in driver.children(recursive=True) if child.pid != me}
    except psutil.Error:
        return {}


def reap(known: dict[int, psutil.Process], grace_s: float = GRACE_S) -> int:
    """SIGTERM, then SIGKILL, what still runs of ``known`` and their children; the number stopped."""
    alive: dict[int, psutil.Process] = {}
    for process in known.values():
        with suppress(psutil.Error):
            if process.is_running():
                alive[process.pid] = process
                alive.update({child.pid: child for child in process.children(recursive=True)})
    for process in alive.values():
        with suppress(psutil.Error):
            process.terminate()
    _, still = psutil.wait_procs(list(alive.values()), timeout=grace_s)
    for process in still:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(still, timeout=grace_s)
    return len(alive)


def watch(driver_pid: int, pipe: IO[bytes]) -> int:
    """Follow the driver's tree until the pipe closes; reap it unless the driver said it was done."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return 0
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    received = b""
    while True:
        known.update(_descendants(driver, me))
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
