"""Fail fast: models, devices and Ray clusters that are not there are refused through the real
command line before anything starts: exit 2, one `error:` line per problem naming it, nothing written,
no Ray (a sweep's folder is created only once Ray is up, so its absence shows Ray never started).

Network checks run against real sockets on this machine: a closed port (connection refused), a
listener that never answers (a timeout), and a tiny HTTP server (reachable)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slm_ray.composition import compose_config
from slm_ray.preflight import check_run
from slm_ray.preflight.models import hub_cache_dir, in_hub_cache
from slm_ray.preflight.ray_address import GRPC_HELLO, ray_address_problem, split_address
from slm_ray.netcheck import tcp_problem
from slm_ray.run import main as run_main
from slm_ray.sweep import main as sweep_main

REPO = Path(__file__).resolve().parents[1]
FAKE_VLLM = REPO / "tests" / "fakes" / "vllm" / "__init__.py"
SMOLLM2_135M = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_360M = "HuggingFaceTB/SmolLM2-360M-Instruct"
HANG_GUARD_S = 60  # a subprocess that takes longer is hanging: every refusal here takes seconds


# --- fixtures: a clean working folder, an empty HF cache, real sockets ------------------------------

@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder (the cwd), an empty Hugging Face cache beside it, the hub offline,
    no Ray address, no ClearML credentials."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))
    for name in ("RAY_ADDRESS", "HF_ENDPOINT", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    return work


def _hub_online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Downloads allowed, from ``endpoint`` (a local port: nothing can leave this machine)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def cache_model(cache: Path, repo: str, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A hub model in the Hugging Face cache layout: models--org--name/{refs/main, snapshots/<rev>/}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 49152}))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def files_under(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def refused(main, args: list[str], capsys: pytest.CaptureFixture[str], workdir: Path) -> list[str]:
    """Run a CLI in this process; assert exit 2, no traceback, nothing written; the error lines."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert files_under(workdir) == [], "a refused command must write nothing"
    return error_lines(err)


def write_sweep(folder: Path, models: list[str], name: str = "pf") -> Path:
    path = folder.parent / f"{name}.yaml"  # beside the working folder: that one must stay empty
    path.write_text(f"name: {name}\noverrides: [dataset.limit=2, tracker=none]\n"
                    f"grid:\n  model: [{', '.join(models)}]\n  experiment_mode: [no_context]\nresources: {{cpus: 1}}\n")
    return path


# --- models --------------------------------------------------------------------------------------

def test_run_refuses_an_uncached_hub_model_when_offline(workdir: Path, capsys) -> None:
    lines = refused(run_main, ["model=smollm2_360m", "tracker=none"], capsys, workdir)
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("error: model=smollm2_360m: ") and SMOLLM2_360M in line
    assert "HF_HUB_OFFLINE=1" in line and str(hub_cache_dir()) in line
    assert f"hf download {SMOLLM2_360M}" in line and "model.source=local" in line
    assert "model=smollm2_135m_gguf" in line


def test_run_with_several_models_names_each_bad_one_once(workdir: Path, capsys) -> None:
    args = ["model=smollm2_135m,smollm2_360m,tiny_llama", "experiment_mode=no_context,oracle_context",
            "tracker=none"]
    lines = refused(run_main, args, capsys, workdir)
    assert len(lines) == 2
    assert "model=smollm2_135m:" in lines[0] and "model=smollm2_360m:" in lines[1]


def test_a_cached_hub_model_is_accepted_and_only_the_missing_one_is_named(workdir: Path, capsys) -> None:
    cache_model(hub_cache_dir(), SMOLLM2_135M)
    assert in_hub_cache(SMOLLM2_135M, hub_cache_dir())
    check_run([compose_config(["model=smollm2_135m"])])  # no error: loadable offline
    sweep = write_sweep(workdir, ["smollm2_135m", "smollm2_360m", "tiny_llama"])
    lines = refused(sweep_main, [str(sweep)], capsys, workdir)
    assert len(lines) == 1 and "model=smollm2_360m:" in lines[0]


def test_hf_home_is_where_the_cache_is_looked_up(workdir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cache_model(tmp_path / "hf-home" / "hub", SMOLLM2_360M)
    check_run([compose_config(["model=smollm2_360m"])])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    assert "elsewhere" in refused(run_main, ["model=smollm2_360m"], capsys, workdir)[0]


def test_an_unreachable_hub_is_refused_after_one_probe(workdir: Path, closed_port: int, monkeypatch, capsys) -> None:
    _hub_online(monkeypatch, f"http://127.0.0.1:{closed_port}")
    lines = refused(run_main, ["model=smollm2_360m,smollm2_1.7b", "tracker=none"], capsys, workdir)
    assert len(lines) == 2
    for line, name in zip(lines, ["smollm2_360m", "smollm2_1.7b"]):
        assert f"model={name}:" in line
        assert f"the hub at http://127.0.0.1:{closed_port} cannot be reached (connection refused)" in line


def test_a_hub_that_never_answers_is_refused_within_seconds(workdir: Path, silent_port: int, monkeypatch,
                                                            capsys) -> None:
    _hub_online(monkeypatch, f"http://127.0.0.1:{silent_port}")
    started = time.monotonic()
    lines = refused(run_main, ["model=qwen3_0.6b", "tracker=none"], capsys, workdir)
    print(f"time to error, silent hub: {time.monotonic() - started:.1f} s")
    assert len(lines) == 1 and "model=qwen3_0.6b:" in lines[0] and "no answer within 3 s" in lines[0]


def test_a_reachable_hub_accepts_an_uncached_model(workdir: Path, http_port: int, monkeypatch) -> None:
    """It will be downloaded: the check lets it through (nothing is downloaded here)."""
    _hub_online(monkeypatch, f"http://127.0.0.1:{http_port}")
    check_run([compose_config(["model=smollm2_360m"])])


def test_a_hub_model_whose_path_is_a_model_folder_is_accepted(workdir: Path, tmp_path: Path) -> None:
    folder = cache_model(tmp_path / "elsewhere", "org/name")
    check_run([compose_config(["model=smollm2_360m", f"model.path={folder}"])])


@pytest.mark.parametrize("overrides,expected", [
    (["model.source=local", "model.path=/no/such/folder"], "model.path='/no/such/folder': folder not found"),
    (["model.source=local", "model.path={empty}"], "has no config.json"),
    (["model=smollm2_135m_gguf", "model.path=no_such_package"], "model.path='no_such_package': package not installed"),
    (["model=smollm2_135m_gguf", "model.gguf_file=missing.gguf"], "model.gguf_file='missing.gguf' not in"),
], ids=["local-missing", "local-no-config", "gguf-no-package", "gguf-no-file"])
def test_models_on_disk_must_be_there(workdir: Path, tmp_path: Path, overrides: list[str], expected: str,
                                      capsys) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    args = [o.format(empty=empty) for o in overrides] + ["tracker=none"]
    lines = refused(run_main, args, capsys, workdir)
    assert len(lines) == 1 and lines[0].startswith("error: model=") and expected in lines[0]


def test_the_offline_models_pass(workdir: Path) -> None:
    check_run([compose_config([f"model={m}"]) for m in ("smollm2_135m_gguf", "tiny_llama", "tiny_qwen3")])


def test_size_comparison_sweep_without_hub_is_refused_before_ray(workdir: Path) -> None:
    """The reported case, as a user types it: every model named, in seconds, no Ray, no folder."""
    command = [sys.executable, "-m", "slm_ray.sweep", str(REPO / "sweeps" / "size_comparison.yaml")]
    started = time.monotonic()
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S)
    print(f"time to error, size_comparison offline: {time.monotonic() - started:.1f} s")
    assert done.returncode == 2, done.stderr
    lines = error_lines(done.stderr)
    assert [line.split(":")[1].strip() for line in lines] == [
        "model=smollm2_135m", "model=smollm2_360m", "model=smollm2_1.7b"]
    assert "Traceback" not in done.stderr and "Ray" not in done.stdout + done.stderr
    assert files_under(workdir) == []  # no outputs/sweeps/size_comparison: Ray never started


# --- devices and backends --------------------------------------------------------------------------

def test_cuda_without_a_gpu_is_refused(workdir: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: model.device=cuda is valid here")
    sweep = write_sweep(workdir, ["tiny_llama", "tiny_qwen3"])
    lines = refused(sweep_main, [str(sweep), "model.device=cuda"], capsys, workdir)
    assert len(lines) == 2
    for line, name in zip(lines, ["tiny_llama", "tiny_qwen3"]):
        assert line == (f"error: model={name}: model.device='cuda' but no CUDA GPU is visible "
                        "(valid here: cpu, auto)")


def test_vllm_backend_without_vllm_is_refused(workdir: Path, monkeypatch, capsys) -> None:
    cache_model(hub_cache_dir(), SMOLLM2_360M)
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    lines = refused(run_main, ["model=smollm2_360m", "model.backend=vllm", "tracker=none"], capsys, workdir)
    assert lines == ["error: model=smollm2_360m: model.backend=vllm needs vllm, which is not installed "
                     "(pip install 'slm-ray[gpu]'; without a GPU, vLLM's CPU build: bash scripts/setup_vllm_cpu.sh; "
                     "see docs/GPU.md)"]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    """tests/fakes/vllm under the name ``vllm`` for this test (as in tests/test_vllm.py)."""
    spec = importlib.util.spec_from_file_location("vllm", FAKE_VLLM)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vllm", module)
    spec.loader.exec_module(module)
    return module


def test_vllm_backend_needs_a_visible_gpu(workdir: Path, fake_vllm, monkeypatch, capsys) -> None:
    from slm_ray.generation import vllm as vllm_backend

    cache_model(hub_cache_dir(), SMOLLM2_360M)
    args = ["model=smollm2_360m", "model.backend=vllm", "tracker=none"]
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 0)
    lines = refused(run_main, args, capsys, workdir)
    assert len(lines) == 1 and "model.backend=vllm needs 1 CUDA GPU(s) and 0 is visible" in lines[0]
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 1)
    check_run([compose_config(args)])  # installed (the fake) and a GPU: accepted


def test_vllm_cpu_build_runs_without_a_gpu_and_refuses_cuda(workdir: Path, fake_vllm, monkeypatch, capsys) -> None:
    """With vLLM's CPU build installed, model.backend=vllm needs no GPU; model.device=cuda is refused."""
    from slm_ray.generation import vllm as vllm_backend

    monkeypatch.setattr(vllm_backend, "installed_build", lambda: "cpu")
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 0)
    args = ["model=smollm2_135m_gguf", "model.backend=vllm", "tracker=none"]
    check_run([compose_config(args)])  # accepted: the CPU build, no GPU
    lines = refused(run_main, [*args, "model.device=cuda"], capsys, workdir)
    assert lines == ["error: model=smollm2_135m_gguf: model.device='cuda' with model.backend=vllm, but this vLLM is "
                     "the CPU build (vllm-cpu) (valid here: auto, cpu); see docs/GPU.md for the other build"]


# --- Ray addresses ---------------------------------------------------------------------------------

def test_an_unreachable_ray_address_is_one_line(workdir: Path, closed_port: int) -> None:
    """The reported case, through a real process: `--address 127.0.0.1:1` hung."""
    sweep = write_sweep(workdir, ["tiny_llama"])
    command = [sys.executable, "-m", "slm_ray.sweep", str(sweep), "--address", f"127.0.0.1:{closed_port}"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S)
    print(f"time to error, closed Ray port: {time.monotonic() - started:.1f} s")
    assert done.returncode == 2, done.stderr
    assert error_lines(done.stderr) == [
        f"error: cannot reach a Ray cluster at 127.0.0.1:{closed_port} (connection refused): start one with "
        "`ray start --head` or drop --address to run locally"]
    assert "Traceback" not in done.stderr and files_under(workdir) == []


def test_a_ray_port_that_never_answers_times_out(workdir: Path, silent_port: int, capsys) -> None:
    sweep = write_sweep(workdir, ["tiny_llama"])
    lines = refused(sweep_main, [str(sweep), "--address", f"ray://127.0.0.1:{silent_port}"], capsys, workdir)
    assert lines == [f"error: cannot reach a Ray cluster at ray://127.0.0.1:{silent_port} (no answer within 3 s): "
                     "start one with `ray start --head` or drop --address to run locally"]


def test_ray_address_from_the_environment_is_checked_too(workdir: Path, closed_port: int, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port}")
    sweep = write_sweep(workdir, ["tiny_llama"])
    lines = refused(sweep_main, [str(sweep)], capsys, workdir)
    assert len(lines) == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{closed_port}" in lines[0]
    assert "unset RAY_ADDRESS to run locally" in lines[0]


def _no_ray_running_here() -> None:
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray cluster runs on this machine: `auto` would find it")


def test_auto_without_a_cluster_is_one_line(workdir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))  # no ray_current_cluster file
    _no_ray_running_here()
    sweep = write_sweep(workdir, ["tiny_llama"])
    lines = refused(sweep_main, [str(sweep), "--address", "auto"], capsys, workdir)
    assert lines == ["error: cannot find a Ray cluster for --address auto (no Ray cluster is running on this "
                     "machine): start one with `ray start --head` or drop --address to run locally"]


def test_auto_with_a_stale_cluster_file_is_refused(workdir: Path, tmp_path: Path, closed_port: int, monkeypatch,
                                                  capsys) -> None:
    """`ray start` recorded a cluster that is gone: `auto` finds its address, which does not answer."""
    (tmp_path / "ray-tmp" / "ray").mkdir(parents=True)
    (tmp_path / "ray-tmp" / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{closed_port}")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    _no_ray_running_here()
    sweep = write_sweep(workdir, ["tiny_llama"])
    lines = refused(sweep_main, [str(sweep), "--address", "auto"], capsys, workdir)
    assert len(lines) == 1  # Ray turns 127.0.0.1 into this node's address
    assert lines[0].startswith("error: cannot reach the Ray cluster that --address auto found at ")
    assert f":{closed_port} (connection refused): start one with `ray start --head`" in lines[0]


def test_bad_models_and_a_bad_address_are_all_reported(workdir: Path, closed_port: int, capsys) -> None:
    sweep = write_sweep(workdir, ["smollm2_360m", "tiny_llama"])
    lines = refused(sweep_main, [str(sweep), f"--address=127.0.0.1:{closed_port}"], capsys, workdir)
    assert len(lines) == 2 and "model=smollm2_360m:" in lines[0] and "cannot reach a Ray cluster" in lines[1]


@pytest.mark.ray
def test_a_running_cluster_answers_the_check(closed_port: int) -> None:
    """A real Ray head (not connected from here): its GCS answers the greeting; a closed port does not."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        assert not ray.is_initialized()  # the check must not lean on a connection of this process
        assert ray_address_problem(cluster.address) is None
        assert tcp_problem(*split_address(cluster.address), hello=GRPC_HELLO) is None
    finally:
        cluster.shutdown()
    assert ray_address_problem(f"127.0.0.1:{closed_port}") is not None


@pytest.mark.parametrize("address,parts", [
    ("127.0.0.1:6379", ("127.0.0.1", 6379)), ("head.example:6380", ("head.example", 6380)),
    ("ray://head:10001", ("head", 10001)), ("ray://head", ("head", 10001)), ("[::1]:6379", ("::1", 6379)),
    ("head", None), ("http://head:8265", None), ("127.0.0.1:port", None), (":6379", None),
])
def test_split_address(address: str, parts: tuple[str, int] | None) -> None:
    assert split_address(address) == parts


def test_cfg_prints_without_checking(workdir: Path, capsys) -> None:
    """--cfg shows the plan of a machine that cannot run it (e.g. to check a sweep file offline)."""
    assert sweep_main(["--cfg", str(REPO / "sweeps" / "size_comparison.yaml")]) == 0
    assert run_main(["--cfg", "model=smollm2_360m"]) == 0
    assert "error:" not in capsys.readouterr().err


def test_import_stays_light() -> None:
    code = ("import sys, slm_ray.preflight, slm_ray.run, slm_ray.sweep, slm_ray.netcheck; "
            "print([m for m in ('torch', 'ray', 'clearml', 'huggingface_hub', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ}).stdout.strip()
    assert out == "[]"


@pytest.mark.slow
def test_a_cluster_that_needs_rays_auth_token_is_refused_in_one_line_within_seconds(tmp_path: Path) -> None:
    """A real head node with token authentication; the sweep joins it without the token, then with a
    wrong one: one line naming the token settings, exit 2, and nothing written. One line also means
    ray.init never ran: its retries print a line a second for about 20 s."""
    import secrets
    import shutil
    import socket
    import tempfile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    ray_bin = Path(sys.executable).parent / "ray"
    head_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={ray_tmp}"], env=head_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while tcp_problem("127.0.0.1", port, hello=GRPC_HELLO) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        (tmp_path / "s.yaml").write_text("name: joined\noverrides: [tracker=none, dataset.limit=2]\n"
                                         "grid: {model: [tiny_llama]}\n")
        for auth in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
            env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
            done = subprocess.run([str(Path(sys.executable).parent / "slm-ray"), "sweep", "s.yaml", "--address",
                                   f"127.0.0.1:{port}"], cwd=tmp_path, env={**env, **auth, "HOME": str(tmp_path)},
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 2, done.stdout + done.stderr
            lines = (done.stdout + done.stderr).strip().splitlines()
            assert len(lines) == 1 and "requires Ray's auth token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0], lines
            assert not (tmp_path / "outputs").exists()
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
