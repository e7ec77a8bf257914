"""Numeric precision of the model's forward and backward passes: fp32, or bf16 autocast.

bf16 runs under PyTorch's own autocast: matrix products take bf16 inputs, everything autocast
keeps in fp32 (softmax, norms, losses) stays fp32, and the parameters themselves are untouched,
so the LoRA factors, their gradients and AdamW's state remain fp32 and the server math
(factorization, geometry) sees exactly the tensors it sees under fp32.

`auto` picks bf16 only where the hardware computes it natively (a CUDA device that supports it,
or a CPU with AVX512-BF16 / AMX-BF16); elsewhere bf16 is emulated and slower than fp32.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, why)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"{torch.cuda.get_device_name(device)} {'supports' if ok else 'lacks'} bf16"
    if device.type == "cpu":
        found = sorted(_cpu_flags() & set(NATIVE_BF16_CPU_FLAGS))
        capability = torch.backends.cpu.get_cpu_capability()
        if found:
            return True, f"the CPU has {', '.join(found)} (torch kernels: {capability})"
        return False, f"the CPU lacks {' and '.join(NATIVE_BF16_CPU_FLAGS)} (torch kernels: {capability})"
    return False, f"bf16 autocast is not supported here on {device.type}"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """('fp32' | 'bf16', reason) for a configured precision on `device`."""
    if requested == "fp32":
        return "fp32", "configured"
    native, why = native_bf16(device)
    if requested == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"precision bf16 needs a CPU or CUDA device, got {device}")
        return "bf16", "configured" + ("" if native else f"; note: {why}, so bf16 is emulated and slow")
    if requested == "auto":
        return ("bf16" if native else "fp32"), f"auto: {why}"
    raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Forward (and, for training, the backward of what runs inside) at `precision`."""
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16' once resolved, got {precision!r}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if device.type == "cpu":
            # The CPU flash-attention kernel's bf16 backward is several times slower than its fp32
            # one (measured in benchmarks/bench_throughput.py); the math backend is not.
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield
