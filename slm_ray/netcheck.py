"""Bounded reachability probes: is anything answering at host:port, or at a URL?

Clients such as ClearML, Ray and the Hugging Face hub retry an unreachable server for minutes;
these probes answer in a few seconds so that a command can refuse (or fall back) at once. Each
probe runs in a daemon thread joined with a deadline, so that even a DNS lookup that hangs
cannot hold the caller longer than ``timeout`` plus a second.
"""

from __future__ import annotations

import socket
import ssl
import threading
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlsplit

#: Seconds a probe may take: long enough for a server across the internet, short enough that a
#: refusal or a fallback comes within a few seconds.
DEFAULT_TIMEOUT_S = 3.0


def describe_error(exc: BaseException, timeout: float) -> str:
    """A few words for why a connection failed ("connection refused", "no answer within 3 s")."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return describe_error(exc.reason, timeout)
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _bounded(probe: Callable[[], str | None], timeout: float) -> str | None:
    """``probe()`` in a daemon thread; its answer, or a timeout note when it is not back in time."""
    answer: list[str | None] = []
    thread = threading.Thread(target=lambda: answer.append(probe()), name="slm-ray-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return answer[0] if answer else f"no answer within {timeout:g} s"


def tcp_problem(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S, hello: bytes | None = None) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout`` and, if ``hello`` is given,
    the server answers it (any bytes, or closing the connection) in that time; else why not. Without
    a hello, a process that listens but is stuck (or a port kept open by a proxy) would look alive."""

    def probe() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if hello is not None:
                    sock.sendall(hello)
                    sock.recv(1)  # b"" (closed) counts: a live process decided to hang up
                return None
        except (TimeoutError, socket.timeout):
            return f"no answer within {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", said in words
            return describe_error(exc, timeout)

    return _bounded(probe, timeout)


def http_problem(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when an HTTP(S) server answers a HEAD of ``url`` within ``timeout`` (any status counts:
    the server is there), else why not. Certificates are not checked: only reachability is."""
    if urlsplit(url).scheme not in ("http", "https"):
        return f"not an http(s) URL: {url}"

    def probe() -> str | None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "slm-ray-probe"})
        context = ssl._create_unverified_context()  # noqa: S323 - a reachability probe, no data sent
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context):
                return None
        except urllib.error.HTTPError:
            return None  # 401, 404, 405...: a server answered
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", said in words
            return describe_error(exc, timeout)

    return _bounded(probe, timeout)
