"""What the benchmark measures with, the same way for every side: the machine, its matmul peak, training tokens,
memory, and model FLOPs.

- Tokens: the non-padding tokens that enter the trained model's forward pass while gradients are on (a forward
  pre-hook: the attention mask's sum, or every token of a batch without one). A DPO step counts its chosen and
  rejected sequences, prompt included; reference forwards and evaluation count nothing.
- Model FLOPs per token: 6·N for a training forward + backward, plus 2·N for DPO's reference forward; N counts
  every parameter, a tied LM head once more (it is a matmul of its own). Attention FLOPs are left out.
- Peak: the best FLOP/s of large square matmuls (2·n³ per product) at the process's torch thread count.
- Memory: resident set size sampled every 20 ms in a thread (psutil), so a peak is the peak of this process only.
"""

from __future__ import annotations

import os
import platform
import threading
import time


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine in a few fields (the README's table names it)."""
    import psutil
    import torch

    return {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "native_bf16": cpu_has_native_bf16(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def matmul_peak(dtype_name: str, size: int, seconds: float = 1.0, min_repeats: int = 3) -> tuple[float, int]:
    """(best FLOP/s, n) of n×n matmuls in `dtype_name` (float32 or bfloat16), n = `size`, at torch's current thread
    count.
    A dtype the CPU has no units for (bf16 without AVX512-BF16/AMX runs at well under 1 GFLOP/s) gets a smaller
    size, so that one matmul takes about `seconds` / 3 instead of minutes."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    size = min(size, _affordable_size(dtype, seconds / 3))
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: kernels chosen, pages touched
    best, repeats, started = float("inf"), 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - tick)
        repeats += 1
    return 2 * size**3 / best, size


def _affordable_size(dtype, seconds: float, probe: int = 256) -> int:
    """The n whose n×n matmul takes about `seconds`, extrapolated (n³) from one probe matmul."""
    import torch

    a = torch.ones(probe, probe, dtype=dtype)
    torch.mm(a, a)
    tick = time.perf_counter()
    torch.mm(a, a)
    elapsed = max(time.perf_counter() - tick, 1e-9)
    return max(probe, int(probe * (seconds / elapsed) ** (1 / 3)))


def parameter_count(model) -> int:
    """N for model FLOPs: every parameter, plus a tied output head counted again (it is a matmul of its own)."""
    count = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is not None and inputs is not None and head.weight is inputs.weight:
        count += head.weight.numel()
    return int(count)


class TokenCounter:
    """Counts the non-padding tokens of every training forward of `model` (see the module docstring)."""

    def __init__(self, model):
        self.tokens = 0
        self.forwards = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None:
            self.tokens += int(mask.sum())
        elif ids is not None:
            self.tokens += int(ids.numel())
        self.forwards += 1

    def close(self) -> None:
        self._handle.remove()


class MemorySampler:
    """Peak resident set size of this process, sampled every `interval` seconds from start() to stop()."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.start_mb = self.rss_mb()
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())
        return self.peak_mb
