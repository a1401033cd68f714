"""Shared pytest fixtures. Each section belongs to one part of the package; append new sections."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Nothing is fetched from a model hub in tests; local Ray clusters run without token auth. Set for
# the session (before collection: huggingface_hub reads HF_HUB_OFFLINE once, when a test module
# first imports it) by a MonkeyPatch that pytest_unconfigure undoes; a value the caller set wins.
SESSION_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
_session_env = pytest.MonkeyPatch()


def pytest_configure(config: pytest.Config) -> None:
    for name, value in SESSION_ENV.items():
        _session_env.setenv(name, os.environ.get(name, value))
    if os.environ.get(CHECK_MARKS) and not os.environ.get("RAY_TMPDIR"):
        # Ray's sessions of this test run in a folder of its own, so that the check below never counts
        # the session of another process on the machine (a second test run, a user's sweep). Short:
        # Ray's socket paths under it must stay within the 107 bytes of a Unix socket's name.
        import tempfile

        _session_env.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="slmr-", dir="/tmp"))


def pytest_unconfigure(config: pytest.Config) -> None:
    private = os.environ.get("RAY_TMPDIR", "") if os.environ.get(CHECK_MARKS) else ""
    _session_env.undo()
    if private.startswith("/tmp/slmr-") and private != os.environ.get("RAY_TMPDIR"):
        import shutil

        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(autouse=True)
def _working_directory_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts in the folder the last one started in: an actor's body run in this process
    (a ``RetrieverService`` in a unit test) enters the driver's project folder, a test's tmp_path, and
    later tests would otherwise resolve relative paths there, or fail once that folder is removed."""
    monkeypatch.chdir(os.getcwd())


# --- S3: a real S3 endpoint (moto's server on localhost) for slm_ray.data.storage -----------------

S3_TEST_KEY = "testing"  # fake credentials: moto accepts any, and a real endpoint would refuse them


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on a free localhost port, shared by the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, tmp_path: Path) -> str:
    """Point boto3 at the moto server with fake credentials, and nothing else from the host.

    Every AWS_* variable of the host is removed and the shared config/credentials files point
    nowhere, so a developer's real profile can neither leak into nor rescue a test; the EC2
    metadata lookup is disabled so a missing-credentials test fails at once instead of probing.
    """
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_endpoint


@pytest.fixture
def s3_client(s3_env: str) -> Any:
    """A boto3 client on the moto server, for tests to upload and change objects directly."""
    import boto3

    return boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url=s3_env)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A new, uniquely named bucket on the moto server (the server outlives single tests)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


# --- experiments: a composed config pointed at tmp_path -------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: indexes, the tiny tokenizer and the dequantised SmolLM2 are built once."""
    return Path(os.environ.get("SLM_RAY_TEST_CACHE") or tmp_path_factory.mktemp("cache"))


@pytest.fixture
def make_config(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """Compose the real config with overrides, outputs under tmp_path, no tracker unless asked."""
    from slm_ray.composition import compose_config

    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))

    def _make(*overrides: str):
        base = [f"experiment.output_dir={tmp_path / 'outputs'}", f"experiment.cache_dir={shared_cache}",
                "tracker=none", "experiment.bootstrap_resamples=200", "experiment.memory_interval_s=0.05"]
        return compose_config([*base, *overrides])

    return _make


# --- Sweeps: local Ray, a simulated two-node GPU cluster, a small corpus (tests/test_sweep*.py) ---


@pytest.fixture
def sweep_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Ray without token auth (local test clusters), ClearML offline in a temporary cache, and a
    temporary working directory: returns it. Relative sweep outputs land there."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))
    for name in ("CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def sweep_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder (tiny tokenizer, small indexes) shared by the sweep tests of a session."""
    return tmp_path_factory.mktemp("sweep-cache")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL corpus of 80 passages: the gold passages of the first 40 NQ questions and 40 Wikipedia
    distractors. A dense index over it builds in seconds on two CPU cores."""
    import itertools
    import json

    from slm_ray.data.builtin import NQ_OPEN_ORACLE, WIKI_DISTRACTORS
    from slm_ray.data.corpus import _split_dpr_contents
    from slm_ray.data.files import iter_jsonl

    rows = []
    for i, record in enumerate(itertools.islice(iter_jsonl(NQ_OPEN_ORACLE), 40)):
        ctx = record["ctxs"][0]
        rows.append({"id": f"gold-{i}", "title": ctx.get("title", ""), "text": ctx["text"]})
    for record in itertools.islice(iter_jsonl(WIKI_DISTRACTORS), 40):
        title, text = _split_dpr_contents(record["contents"])
        rows.append({"id": f"wiki-{record['id']}", "title": title, "text": text})
    path = tmp_path_factory.mktemp("corpus") / "small_corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One local Ray (2 CPUs) that a module's tests share, for those that need a Ray but not one of
    their own (a sweep command starts its own). The test process is connected."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        # address="local": a Ray of its own, never the cluster another job on this machine started
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[Any]:
    """A real Ray cluster of two nodes on this machine, each declaring 2 CPUs and 1 GPU (the GPUs
    are only logical: trials ask for GPU shares and run on CPU). The test process is connected."""
    import ray
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
        cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


# --- Network: real local sockets for reachability checks (tests/test_preflight.py, ClearML fallback) --


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def http_port() -> Iterator[int]:
    """A tiny HTTP server that answers every request with 404, as a hub answers an unknown path."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's naming
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


# --- Two processes at once (tests of build locks) ---------------------------------------------------


@pytest.fixture
def race_two_processes():
    """Start two spawned processes running ``target(*args, start, results)``, release them together,
    and return what each put on ``results``, sorted (both must exit cleanly)."""
    import multiprocessing
    import time

    def race(target: Any, *args: Any) -> list[Any]:
        context = multiprocessing.get_context("spawn")
        start, results = context.Event(), context.Queue()
        children = [context.Process(target=target, args=(*args, start, results)) for _ in range(2)]
        for child in children:
            child.start()
        time.sleep(0.5)
        start.set()
        for child in children:
            child.join(timeout=120)
            assert child.exitcode == 0
        return sorted(results.get(timeout=5) for _ in children)

    return race


# --- Tiers: a test that starts Ray is marked `ray`; `-m "not slow and not ray"` is the quick tier -------

#: Fixtures that start Ray: every test using one is marked `ray` at collection.
RAY_FIXTURES = frozenset({"two_node_cluster", "local_ray", "cluster_to_break", "vllm_sweep"})
#: Set (as .ci/run does) to fail a test of the quick tier that starts Ray without the mark.
CHECK_MARKS = "SLM_RAY_CHECK_MARKS"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


def _ray_sessions() -> set[str]:
    """Ray's session folders on this machine (where ray.init puts them: RAY_TMPDIR, TMPDIR or /tmp)."""
    root = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"
    return {p.name for p in root.glob("session_2*")}


@pytest.fixture(autouse=True)
def _quick_tier_starts_no_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """With SLM_RAY_CHECK_MARKS=1, a test of the quick tier (neither `slow` nor `ray`) fails if a Ray
    session began while it ran: in its process or in a command it started."""
    node = request.node
    if not os.environ.get(CHECK_MARKS) or node.get_closest_marker("ray") or node.get_closest_marker("slow"):
        yield
        return
    before = _ray_sessions()
    yield
    started = _ray_sessions() - before
    if started:
        pytest.fail(f"{node.nodeid} started Ray ({', '.join(sorted(started))}) but is not marked: "
                    "add @pytest.mark.ray", pytrace=False)
