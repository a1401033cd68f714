"""Is the Ray cluster a sweep would join there? One connection and greeting, before ``ray.init``.

``ray.init(address=...)`` retries an unreachable GCS for minutes; a TCP connect and a gRPC greeting
with a short timeout tell the user at once. The address is ``--address``, else ``RAY_ADDRESS`` (what
``ray.init`` reads); ``auto`` is resolved the way Ray resolves it; ``local`` and none start a new Ray.
"""

from __future__ import annotations

import os
import sys

from slm_ray.netcheck import tcp_problem

#: The port of a Ray Client server when ``ray://host`` names none.
RAY_CLIENT_PORT = 10001
START_HINT = "start one with `ray start --head`"
#: The HTTP/2 connection preface and an empty SETTINGS frame: Ray's GCS and its client server speak
#: gRPC, which answers this at once with a SETTINGS frame of its own.
GRPC_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port``, ``[v6]:port`` or ``ray://host[:port]``; None if not one of those."""
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").rstrip("/")
    host, colon, port = rest.rpartition(":")
    if not colon or host.endswith(":"):  # no port (or a bare IPv6 address)
        host, port = rest, str(RAY_CLIENT_PORT) if client else ""
    host = host.strip("[]")
    if not host or not port.isdigit() or "/" in host:
        return None
    return host, int(port)


def resolve_auto() -> tuple[str | None, str]:
    """Ray's own answer to ``auto`` (RAY_ADDRESS, the last ``ray start`` of this machine, a running
    GCS): (address, "") or (None, why not). ("auto", "") when this Ray cannot say: ray.init decides."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return "auto", ""
    try:
        return canonicalize_bootstrap_address("auto"), ""
    except ConnectionError:
        return None, "no Ray cluster is running on this machine"
    except Exception:  # noqa: BLE001 - a private helper: when it fails, ray.init gives its own answer
        return "auto", ""


def ray_address_problem(address: str | None) -> str | None:
    """Why the cluster at ``address`` (or RAY_ADDRESS) cannot be reached, or None (also for a local Ray)."""
    option, hint = "--address", "drop --address to run locally"
    if not address:
        address, option, hint = os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS", "unset RAY_ADDRESS to run locally"
    if not address or address == "local":
        return None
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return None  # the sweep uses the Ray this process is already connected to
    where = f"a Ray cluster at {address}"
    if address == "auto":
        resolved, why = resolve_auto()
        if resolved is None:
            return f"cannot find a Ray cluster for {option} auto ({why}): {START_HINT} or {hint}"
        if resolved == "auto":
            return None
        address, where = resolved, f"the Ray cluster that {option} auto found at {resolved}"
    parts = split_address(address)
    if parts is None:
        return f"{option} {address!r} is not a Ray address (valid: host:port, ray://host:port, auto, local)"
    problem = tcp_problem(*parts, hello=GRPC_HELLO)
    if problem is not None:
        return f"cannot reach {where} ({problem}): {START_HINT} or {hint}"
    if not address.startswith("ray://") and gcs_refuses_token(*parts):
        return (f"{where} requires Ray's auth token and this process sends none or a wrong one "
                f"(RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')}): set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token) to the token that "
                "`ray get-auth-token` prints on its head node")
    return None


def gcs_refuses_token(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """Whether the GCS at host:port answers "unauthenticated" to a request carrying this process's
    token (none when it has none). ``ray.init`` would retry such a cluster for about 20 s, then
    blame the address; one request tells at once."""
    try:
        import grpc
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # another Ray: ray.init answers for itself
        return False
    loader = AuthenticationTokenLoader.instance()
    metadata = tuple(loader.get_token_for_http_header().items()) if loader.has_token() else ()  # as ray.init sends
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            call(b"", timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False
