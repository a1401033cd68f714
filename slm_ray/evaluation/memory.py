"""Per-process memory sampling, attributed to phases such as "model" and "retriever".

A sweep reports what each configuration costs, not only how well it answers, so the model's
load + generation and the retriever's index build + queries are each wrapped in a phase and
their peaks are reported separately. psutil, pynvml and torch are imported inside functions so
that ``import slm_ray`` stays light.

Sampling alone misses peaks shorter than the interval, so two high-water marks that only ever
grow are also read: the process's maximum RSS (``getrusage``) and torch's
``max_memory_allocated``/``max_memory_reserved``. When one of them has grown since a phase was
entered, the new maximum was reached inside that phase and counts as its peak. Neither is ever
reset: they belong to the process, not to this monitor.

RSS is this process's plus that of the processes it started and that still run: vLLM serves a
model from an engine process and a worker process of its own, which hold the weights and the KV
cache. Pages two of them share (libraries) count once per process, so the sum is an upper bound.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

_MB = 1024.0 * 1024.0
_TIMELINE_KEYS = ("t", "component", "rss_mb", "gpu_mb")


class _NvmlState:
    """The outcome of this process's single NVML initialisation attempt."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tried = False
        self.reason: str | None = None


_NVML = _NvmlState()


def _init_nvml() -> str | None:
    """Initialise NVML; the reason it is unavailable, or None when it works."""
    try:
        import pynvml
    except ImportError as exc:
        return f"pynvml is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as exc:
        return f"NVML unavailable: {type(exc).__name__}: {exc}"
    return None


def _nvml_unavailable_reason() -> str | None:
    """Initialise NVML at most once per process: a machine without a GPU would otherwise pay
    for a failed library load on every sample."""
    with _NVML.lock:
        if not _NVML.tried:
            _NVML.reason = _init_nvml()
            _NVML.tried = True
        return _NVML.reason


def gpu_memory_by_process() -> tuple[float | None, str | None]:
    """GPU memory (MB) used by this process on all devices, and why it is unknown if it is.

    Returns ``(mb, None)`` or ``(None, reason)``. Only compute (CUDA) processes are counted,
    since a process with a graphics context is listed twice. NVML sees every device whatever
    ``CUDA_VISIBLE_DEVICES`` says, which is harmless because usage is filtered by pid. In a
    container without the host's PID namespace NVML reports host pids, so this reads 0.0 there;
    the torch figures are unaffected.
    """
    reason = _nvml_unavailable_reason()
    if reason is not None:
        return None, reason
    import pynvml

    pid = os.getpid()
    try:
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid:
                    used += process.usedGpuMemory or 0  # None where the driver cannot tell
    except pynvml.NVMLError as exc:
        return None, f"NVML query failed: {type(exc).__name__}: {exc}"
    return used / _MB, None


def _tree_rss(process: "psutil.Process") -> int:
    """RSS in bytes of ``process`` and its running descendants (one that ends meanwhile counts 0)."""
    import psutil

    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _rss_high_water_mb() -> float | None:
    """This process's maximum RSS so far, or None where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, else KiB


def _torch_cuda_mb() -> dict[str, float] | None:
    """torch's CUDA allocator figures summed over devices, or None before CUDA is initialised.

    torch is never imported here, and CUDA is not probed until torch itself has initialised it:
    probing from the sampler thread would create a CUDA context as a side effect, and a context
    breaks any later fork. Before initialisation every figure is zero anyway. The summed peaks
    are exact on one GPU and an upper bound on several.
    """
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return None
    devices = range(cuda.device_count())
    return {
        "allocated": sum(cuda.memory_allocated(d) for d in devices) / _MB,
        "reserved": sum(cuda.memory_reserved(d) for d in devices) / _MB,
        "max_allocated": sum(cuda.max_memory_allocated(d) for d in devices) / _MB,
        "max_reserved": sum(cuda.max_memory_reserved(d) for d in devices) / _MB,
    }


@dataclass(frozen=True)
class _Reading:
    """One measurement of the process, before it is attributed to phases."""

    rss_mb: float
    rss_high_water_mb: float | None
    gpu_mb: float | None
    gpu_reason: str | None
    torch_mb: dict[str, float] | None

    def torch(self, key: str) -> float | None:
        return None if self.torch_mb is None else self.torch_mb[key]


def _peak(*values: float | None) -> float | None:
    """Largest of the known values; None when none is known."""
    known = [value for value in values if value is not None]
    return max(known) if known else None


def _grown(now: float | None, at_entry: float | None) -> float | None:
    """A high-water mark that has grown since entry (so was reached inside the phase), else
    None. Unknown at entry means nothing had been recorded yet, so any value is new."""
    if now is None or (at_entry is not None and now <= at_entry):
        return None
    return now


@dataclass
class _Peaks:
    """Running peaks over the samples taken within some window (a phase, or the whole run)."""

    rss_mb: float | None = None
    gpu_mb: float | None = None
    torch_allocated_mb: float | None = None
    torch_reserved_mb: float | None = None
    n_samples: int = 0

    def update(self, now: _Reading, at_entry: _Reading) -> None:
        self.rss_mb = _peak(
            self.rss_mb, now.rss_mb, _grown(now.rss_high_water_mb, at_entry.rss_high_water_mb)
        )
        self.gpu_mb = _peak(self.gpu_mb, now.gpu_mb)
        self.torch_allocated_mb = _peak(
            self.torch_allocated_mb,
            now.torch("allocated"),
            _grown(now.torch("max_allocated"), at_entry.torch("max_allocated")),
        )
        self.torch_reserved_mb = _peak(
            self.torch_reserved_mb,
            now.torch("reserved"),
            _grown(now.torch("max_reserved"), at_entry.torch("max_reserved")),
        )
        self.n_samples += 1


@dataclass
class _Component:
    """Peaks and time of every phase entered under one component name."""

    start_rss_mb: float
    peaks: _Peaks = field(default_factory=_Peaks)
    seconds: float = 0.0
    depth: int = 0
    opened_at: float = 0.0

    def as_dict(self, now: float) -> dict:
        open_seconds = now - self.opened_at if self.depth else 0.0
        return {
            "peak_rss_mb": self.peaks.rss_mb,
            "start_rss_mb": self.start_rss_mb,
            "delta_rss_mb": self.peaks.rss_mb - self.start_rss_mb,
            "peak_gpu_mb": self.peaks.gpu_mb,
            "torch_peak_allocated_mb": self.peaks.torch_allocated_mb,
            "torch_peak_reserved_mb": self.peaks.torch_reserved_mb,
            "n_samples": self.peaks.n_samples,
            "seconds": self.seconds + open_seconds,
        }


@dataclass(eq=False)
class _Span:
    """One entry into a phase; identity matters, so two entries never compare equal."""

    component: str
    at_entry: _Reading


class MemoryMonitor:
    """Samples this process's memory in a daemon thread: CPU RSS (psutil), GPU memory used by
    this process (pynvml, per process, all visible devices; absent when NVML is unavailable),
    and torch.cuda memory_allocated/memory_reserved/max_memory_allocated once torch is already
    imported and has initialised CUDA (torch is never imported here).

    Phases may nest: a sample counts towards every open phase (an outer "rag" phase peaks at
    least as high as the "model" phase inside it) and is labelled with the innermost one in the
    timeline. Entering the same component again accumulates into the same entry; its start is
    the RSS at the first entry.
    """

    def __init__(self, interval_s: float = 0.5, max_timeline: int = 5000) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if max_timeline < 2:
            raise ValueError(f"max_timeline must be at least 2, got {max_timeline}")
        import psutil

        self.interval_s = interval_s
        self.max_timeline = max_timeline
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None
        self._first: _Reading | None = None
        self._latest: dict | None = None
        self._gpu_reason: str | None = None
        self._overall = _Peaks()
        self._components: dict[str, _Component] = {}
        self._active: list[_Span] = []
        self._timeline: list[dict] = []
        self._stride = 1
        self._n_recorded = 0

    def start(self) -> MemoryMonitor:
        """Take a first sample (time zero) and start the sampler thread."""
        if self._thread is not None:
            raise RuntimeError("MemoryMonitor is already running")
        self.sample()
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="memory-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the sampler thread, then take a last sample; a no-op when stopped."""
        if self._thread is None:
            return
        self._stop_event.set()
        self._thread.join()
        self._thread = None
        self.sample()

    def __enter__(self) -> MemoryMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    @contextmanager
    def phase(self, component: str) -> Iterator[None]:
        """Attribute samples taken inside to ``component`` (e.g. "model", "retriever"); takes a
        sample at entry and at exit so even short phases have peaks."""
        reading = self._read()
        with self._lock:
            span = self._open(component, reading)
            self._record(reading)
        try:
            yield
        finally:
            reading = self._read()
            with self._lock:
                self._record(reading)
                self._close(span)

    def sample(self) -> dict:
        """Take one sample now: ``t``, ``component``, ``rss_mb``, ``gpu_mb`` and the torch
        figures (None when unknown)."""
        reading = self._read()
        with self._lock:
            return self._record(reading)

    def latest(self) -> dict:
        """The most recent sample plus the running peaks, flat, for streaming to a tracker."""
        if self._latest is None:
            self.sample()
        with self._lock:
            return {
                **self._latest,
                "peak_rss_mb": self._overall.rss_mb,
                "peak_gpu_mb": self._overall.gpu_mb,
                "torch_peak_allocated_mb": self._overall.torch_allocated_mb,
            }

    def summary(self) -> dict:
        """Everything measured, as JSON-serialisable data: GPU backend status, the run's peaks,
        per-component peaks/start/delta/samples/seconds (MB and s) and the thinned timeline."""
        if self._latest is None:
            self.sample()
        with self._lock:
            now = time.monotonic()
            available = self._gpu_reason is None
            return {
                "interval_s": self.interval_s,
                "gpu_available": available,
                "gpu_backend": "nvml" if available else None,
                "gpu_unavailable_reason": self._gpu_reason,
                "process": {
                    "peak_rss_mb": self._overall.rss_mb,
                    "peak_gpu_mb": self._overall.gpu_mb,
                },
                "components": {
                    name: component.as_dict(now) for name, component in self._components.items()
                },
                "timeline": [dict(point) for point in self._timeline],
            }

    def _read(self) -> _Reading:
        """Measure the process; slow NVML calls happen here, outside the lock."""
        gpu_mb, gpu_reason = gpu_memory_by_process()
        return _Reading(
            rss_mb=_tree_rss(self._process) / _MB,
            rss_high_water_mb=_rss_high_water_mb(),
            gpu_mb=gpu_mb,
            gpu_reason=gpu_reason,
            torch_mb=_torch_cuda_mb(),
        )

    def _open(self, component: str, reading: _Reading) -> _Span:
        """Register a phase entry (lock held)."""
        state = self._components.setdefault(component, _Component(start_rss_mb=reading.rss_mb))
        if state.depth == 0:
            state.opened_at = time.monotonic()
        state.depth += 1
        span = _Span(component, reading)
        self._active.append(span)
        return span

    def _close(self, span: _Span) -> None:
        """Register a phase exit (lock held); time counts once for nested same-name phases."""
        self._active.remove(span)
        state = self._components[span.component]
        state.depth -= 1
        if state.depth == 0:
            state.seconds += time.monotonic() - state.opened_at

    def _record(self, reading: _Reading) -> dict:
        """Attribute a reading to the run and to every open component (lock held)."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
            self._first = reading
        self._overall.update(reading, self._first)
        seen: set[str] = set()
        for span in self._active:  # outermost first: its entry baseline covers inner entries
            if span.component not in seen:
                seen.add(span.component)
                self._components[span.component].peaks.update(reading, span.at_entry)
        self._gpu_reason = reading.gpu_reason
        sample = {
            "t": now - self._t0,
            "component": self._active[-1].component if self._active else None,
            "rss_mb": reading.rss_mb,
            "gpu_mb": reading.gpu_mb,
            "torch_allocated_mb": reading.torch("allocated"),
            "torch_reserved_mb": reading.torch("reserved"),
            "torch_max_allocated_mb": reading.torch("max_allocated"),
        }
        self._latest = sample
        self._append_to_timeline(sample)
        return dict(sample)

    def _append_to_timeline(self, sample: dict) -> None:
        """Keep every ``stride``-th sample; past ``max_timeline`` points drop every other one
        and double the stride, so a long run stays bounded and evenly spaced."""
        if self._n_recorded % self._stride == 0:
            self._timeline.append({key: sample[key] for key in _TIMELINE_KEYS})
            if len(self._timeline) > self.max_timeline:
                self._timeline = self._timeline[::2]
                self._stride *= 2
        self._n_recorded += 1
