"""MemoryMonitor against real allocations, plus fake NVML/torch for the GPU code paths."""

import json
import mmap
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from slm_ray.evaluation import memory
from slm_ray.evaluation.memory import MemoryMonitor, gpu_memory_by_process

MB = 1024 * 1024
INTERVAL = 0.02


def _resident_mb(size_mb: float) -> mmap.mmap:
    """``size_mb`` of fresh memory with every page written, so RSS really grows by that much;
    ``close()`` unmaps it and RSS falls at once. A new anonymous mapping, not np.ones: once earlier
    tests have freed memory, malloc can serve even 300 MB from pages that are already resident,
    and RSS does not move at all (so it went in the full suite)."""
    mapped = mmap.mmap(-1, int(size_mb * MB), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages = np.frombuffer(mapped, dtype=np.uint8)
    pages[:: mmap.PAGESIZE] = 1  # one write per page makes it resident
    del pages  # a mapping cannot be closed while a view of it exists
    return mapped


def _wait_until_sampled(monitor: MemoryMonitor, rss_mb: float, timeout_s: float = 60.0) -> dict:
    """Poll until the monitor's own thread has recorded a sample with at least ``rss_mb``: no
    fixed sleep that a busy machine can outlast. Nothing else samples meanwhile, so the sample
    seen is the thread's."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = monitor.latest()
        if latest["rss_mb"] >= rss_mb:
            return latest
        time.sleep(INTERVAL)
    pytest.fail(f"the sampler thread recorded no RSS >= {rss_mb:.0f} MB within {timeout_s:.0f} s")


def _no_gpu_here() -> bool:
    return gpu_memory_by_process()[1] is not None


def test_model_phase_peak_rises_with_a_real_allocation():
    with MemoryMonitor(interval_s=INTERVAL) as monitor:
        with monitor.phase("model"):
            before = monitor.latest()["rss_mb"]
            weights = _resident_mb(300)
            _wait_until_sampled(monitor, before + 280)
            time.sleep(5 * INTERVAL)
        weights.close()
        with monitor.phase("retriever"):
            time.sleep(5 * INTERVAL)
    components = monitor.summary()["components"]
    model, retriever = components["model"], components["retriever"]
    assert model["peak_rss_mb"] - model["start_rss_mb"] >= 250
    assert model["delta_rss_mb"] == pytest.approx(model["peak_rss_mb"] - model["start_rss_mb"])
    assert abs(retriever["delta_rss_mb"]) < 50
    assert model["n_samples"] >= 3
    assert model["seconds"] >= 5 * INTERVAL
    assert monitor.summary()["process"]["peak_rss_mb"] >= model["peak_rss_mb"]


def test_a_peak_between_samples_is_caught_by_the_high_water_mark():
    pytest.importorskip("resource")
    monitor = MemoryMonitor(interval_s=60)  # never started: only entry and exit samples
    current = monitor.sample()["rss_mb"]
    high_water = memory._rss_high_water_mb()
    with monitor.phase("model"):
        transient = _resident_mb(high_water - current + 200)  # beyond any earlier peak
        transient.close()
    model = monitor.summary()["components"]["model"]
    assert model["delta_rss_mb"] >= 150
    assert model["n_samples"] == 2


def test_nested_and_sequential_phases_are_attributed():
    with MemoryMonitor(interval_s=INTERVAL) as monitor:
        with monitor.phase("rag"):
            with monitor.phase("retriever"):
                time.sleep(3 * INTERVAL)
            with monitor.phase("model"):
                before = monitor.latest()["rss_mb"]
                weights = _resident_mb(300)
                _wait_until_sampled(monitor, before + 280)
                time.sleep(3 * INTERVAL)
            weights.close()
        monitor.sample()
    summary = monitor.summary()
    rag, retriever, model = (summary["components"][k] for k in ("rag", "retriever", "model"))
    assert model["delta_rss_mb"] >= 250
    assert abs(retriever["delta_rss_mb"]) < 50
    assert rag["peak_rss_mb"] >= model["peak_rss_mb"]  # the outer phase sees the inner peak
    assert rag["n_samples"] >= retriever["n_samples"] + model["n_samples"]
    assert rag["seconds"] >= retriever["seconds"] + model["seconds"]
    labels = [point["component"] for point in summary["timeline"]]
    assert {"rag", "retriever", "model", None} <= set(labels)
    assert labels[-1] is None
    big = [p["component"] for p in summary["timeline"] if p["rss_mb"] > model["start_rss_mb"] + 250]
    assert big and set(big) <= {"model", "rag"}


def test_reentering_a_component_accumulates():
    monitor = MemoryMonitor(interval_s=60)
    with monitor.phase("model"):
        first_start = monitor.latest()["rss_mb"]
    with monitor.phase("model"):
        with monitor.phase("model"):
            pass
    model = monitor.summary()["components"]["model"]
    assert model["start_rss_mb"] == first_start
    assert model["n_samples"] == 6


def test_gpu_fields_absent_without_nvml():
    if not _no_gpu_here():
        pytest.skip("NVML works on this machine")
    with MemoryMonitor(interval_s=INTERVAL) as monitor:
        with monitor.phase("model"):
            time.sleep(2 * INTERVAL)
    summary = monitor.summary()
    assert summary["gpu_available"] is False
    assert summary["gpu_backend"] is None
    assert isinstance(summary["gpu_unavailable_reason"], str) and summary["gpu_unavailable_reason"]
    assert summary["process"]["peak_gpu_mb"] is None
    assert summary["components"]["model"]["peak_gpu_mb"] is None
    assert all(point["gpu_mb"] is None for point in summary["timeline"])


def test_summary_is_json_serialisable_and_complete():
    with MemoryMonitor(interval_s=INTERVAL) as monitor:
        with monitor.phase("retriever"):
            time.sleep(2 * INTERVAL)
    summary = json.loads(json.dumps(monitor.summary()))
    assert set(summary) == {
        "interval_s", "gpu_available", "gpu_backend", "gpu_unavailable_reason",
        "process", "components", "timeline",
    }
    assert set(summary["process"]) == {"peak_rss_mb", "peak_gpu_mb"}
    assert set(summary["components"]["retriever"]) == {
        "peak_rss_mb", "start_rss_mb", "delta_rss_mb", "peak_gpu_mb",
        "torch_peak_allocated_mb", "torch_peak_reserved_mb", "n_samples", "seconds",
    }
    assert set(summary["timeline"][0]) == {"t", "component", "rss_mb", "gpu_mb"}
    assert summary["timeline"][0]["t"] == 0.0


def test_timeline_thinning_keeps_length_bounded_and_spacing_even():
    monitor = MemoryMonitor(interval_s=60, max_timeline=10)
    for _ in range(200):
        monitor.sample()
    timeline = monitor.summary()["timeline"]
    assert 5 <= len(timeline) <= 10
    times = [point["t"] for point in timeline]
    assert times == sorted(times)
    assert times[0] == 0.0


def test_stop_joins_the_thread_and_is_idempotent():
    monitor = MemoryMonitor(interval_s=INTERVAL).start()
    thread = monitor._thread
    assert thread.is_alive() and thread.daemon
    with pytest.raises(RuntimeError):
        monitor.start()
    time.sleep(5 * INTERVAL)
    monitor.stop()
    assert not thread.is_alive()
    monitor.stop()
    assert len(monitor.summary()["timeline"]) >= 3  # the thread did sample


def test_latest_reports_sample_and_running_peaks():
    monitor = MemoryMonitor(interval_s=60)
    latest = monitor.latest()
    assert latest["rss_mb"] > 0
    assert latest["peak_rss_mb"] >= latest["rss_mb"]
    assert {"t", "component", "gpu_mb", "peak_gpu_mb", "torch_peak_allocated_mb"} <= set(latest)


@pytest.mark.parametrize("kwargs", [{"interval_s": 0}, {"max_timeline": 1}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MemoryMonitor(**kwargs)


class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(processes_by_device, init_error=None):
    calls = {"init": 0}

    def nvml_init():
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    module = types.ModuleType("pynvml")
    module.NVMLError = _FakeNVMLError
    module.nvmlInit = nvml_init
    module.nvmlDeviceGetCount = lambda: len(processes_by_device)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: processes_by_device[handle]
    module.calls = calls
    return module


@pytest.fixture
def fresh_nvml(monkeypatch):
    """Install a fake pynvml given by the test, then forget the cached NVML outcome. In that order:
    a sampling thread of an earlier test's monitor that is still winding down may initialise NVML
    at any moment, and must find the fake (with the real pynvml on a machine without a GPU, it
    cached "NVML Shared Library Not Found" into the fresh state, once, in a full run)."""

    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        monkeypatch.setattr(memory, "_NVML", memory._NvmlState())
        return module

    return install


def test_gpu_memory_sums_this_process_over_devices(fresh_nvml):
    import os

    me, other = os.getpid(), os.getpid() + 1
    proc = types.SimpleNamespace
    fresh_nvml(_fake_pynvml([
        [proc(pid=me, usedGpuMemory=100 * MB), proc(pid=other, usedGpuMemory=999 * MB)],
        [proc(pid=me, usedGpuMemory=50 * MB), proc(pid=me, usedGpuMemory=None)],
        [],
    ]))
    assert gpu_memory_by_process() == (150.0, None)
    monitor = MemoryMonitor(interval_s=60)
    with monitor.phase("model"):
        pass
    summary = monitor.summary()
    assert summary["gpu_available"] is True
    assert summary["gpu_backend"] == "nvml"
    assert summary["gpu_unavailable_reason"] is None
    assert summary["process"]["peak_gpu_mb"] == 150.0
    assert summary["components"]["model"]["peak_gpu_mb"] == 150.0


def test_nvml_init_failure_is_cached(fresh_nvml):
    fake = fresh_nvml(_fake_pynvml([], init_error=_FakeNVMLError("NVML Shared Library Not Found")))
    for _ in range(3):
        used, reason = gpu_memory_by_process()
        assert used is None
        assert "NVML Shared Library Not Found" in reason
    assert fake.calls["init"] == 1


class _FakeCuda:
    """torch.cuda stand-in with one device whose figures the test sets, in MB."""

    def __init__(self):
        self.mb = {"allocated": 0, "reserved": 0, "max_allocated": 0, "max_reserved": 0}

    def is_initialized(self):
        return True

    def device_count(self):
        return 1

    def memory_allocated(self, device):
        return self.mb["allocated"] * MB

    def memory_reserved(self, device):
        return self.mb["reserved"] * MB

    def max_memory_allocated(self, device):
        return self.mb["max_allocated"] * MB

    def max_memory_reserved(self, device):
        return self.mb["max_reserved"] * MB


def test_torch_peaks_include_transients_inside_the_phase_only(monkeypatch):
    cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    cuda.mb.update(allocated=100, reserved=200, max_allocated=100, max_reserved=200)
    monitor = MemoryMonitor(interval_s=60)
    with monitor.phase("model"):
        # generation peaked at 700 MB between samples and released it again.
        cuda.mb.update(max_allocated=700, max_reserved=800)
    with monitor.phase("retriever"):
        pass  # the old peak of 700 must not be charged to this phase
    components = monitor.summary()["components"]
    assert components["model"]["torch_peak_allocated_mb"] == 700
    assert components["model"]["torch_peak_reserved_mb"] == 800
    assert components["retriever"]["torch_peak_allocated_mb"] == 100
    assert components["retriever"]["torch_peak_reserved_mb"] == 200
    sample = monitor.sample()
    assert sample["torch_allocated_mb"] == 100
    assert sample["torch_reserved_mb"] == 200
    assert sample["torch_max_allocated_mb"] == 700


def test_torch_fields_are_none_while_cuda_is_uninitialised(monkeypatch):
    cuda = _FakeCuda()
    cuda.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monitor = MemoryMonitor(interval_s=60)
    with monitor.phase("model"):
        pass
    assert monitor.summary()["components"]["model"]["torch_peak_allocated_mb"] is None
    assert monitor.sample()["torch_allocated_mb"] is None


def test_imports_stay_light_and_torch_is_never_imported():
    code = (
        "import sys\n"
        "import slm_ray.evaluation.memory as memory, slm_ray.evaluation.metrics\n"
        "heavy = {'torch', 'psutil', 'pynvml'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "monitor = memory.MemoryMonitor(interval_s=0.01).start()\n"
        "with monitor.phase('model'):\n"
        "    pass\n"
        "monitor.stop()\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
