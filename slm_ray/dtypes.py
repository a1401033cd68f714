"""Which floating-point type a model computes in, decided by the hardware when asked for ``auto``.

bfloat16 halves the bytes every decode step reads and, where the hardware multiplies it natively,
runs about 3x faster than float32 on a CPU (SmolLM2-135M closed book on AVX-512 BF16: 27 against
8.8 examples/s). Without native support, bf16 is emulated and slower than float32, so ``auto`` picks
it only where it pays: a CUDA GPU of compute capability 8.0 or newer (Ampere on), or a CPU with
AVX-512 BF16 or AMX. The decision and its reason go into results.json and the resume key.

Pure functions of their inputs (flags, capability) plus thin readers of this machine's facts, so
that tests pass the facts in; importing this module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

DTYPES = ("float32", "bfloat16", "float16")
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX-512 BF16 dot products, AMX tiles.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Lowest CUDA compute capability with native bf16 tensor cores (A100, A10G, L4, H100...).
CUDA_BF16_CAPABILITY = (8, 0)


def choose_dtype(requested: str, device: str, *, cpu_flags: Iterable[str] | None = None,
                 cuda_capability: tuple[int, int] | None = None) -> tuple[str, str]:
    """(dtype, reason) for a model on ``device`` (``cpu`` or ``cuda``, already resolved).

    An explicit ``requested`` dtype passes through with reason ``requested``. For ``auto``: bf16
    where the hardware computes it natively, float32 otherwise. ``cpu_flags`` and
    ``cuda_capability`` default to this machine's (read only when needed).
    """
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype {requested!r} is not one of auto, {', '.join(DTYPES)}")
        return requested, "requested"
    if device == "cuda":
        capability = cuda_device_capability() if cuda_capability is None else cuda_capability
        if capability is None:
            return "bfloat16", "auto: no CUDA device visible here to ask; a GPU engine is assumed to be 8.0 or newer"
        shown = f"{capability[0]}.{capability[1]}"
        if tuple(capability) >= CUDA_BF16_CAPABILITY:
            return "bfloat16", f"auto: CUDA compute capability {shown} computes bf16 natively"
        return "float32", f"auto: CUDA compute capability {shown} < 8.0 has no native bf16"
    flags = set(cpu_flags_of_this_machine() if cpu_flags is None else cpu_flags)
    native = [f for f in CPU_BF16_FLAGS if f in flags]
    if native:
        return "bfloat16", f"auto: CPU has {' and '.join(native)}"
    return "float32", "auto: CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"


def cpu_flags_of_this_machine(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (first processor's ``flags`` line); empty where there is no cpuinfo
    (macOS, Windows: bf16 is then not assumed)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cuda_device_capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, None without one (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def torch_dtype(name: str):
    """The torch dtype object of a name from ``DTYPES``."""
    import torch

    return getattr(torch, name)
