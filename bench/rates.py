"""What a step costs against what the machine can do: FLOPs, the GEMM rate, and the profile's split.

Shared by ``bench/pretrain.py`` and ``bench/load.py``.  Every number a bench reports as a share is
measured in the same process as the step it describes, because the machines are shared: a ratio
within one process means something, an absolute rate between runs does not.
"""
import time
from typing import Callable, Dict

import torch

# Ops that are matrix multiplies (or are built of them: attention cores, convolutions); the rest of
# a profile's self time is elementwise work, reductions, copies and framework overhead.
GEMM_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_cudnn_attention_backward",
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution",
    "aten::_mkldnn_linear", "mkldnn::_linear_pointwise",
})


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after one warm-up call (CPU; synchronise inside
    ``fn`` on a GPU)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def gemm_rate(dtype: torch.dtype, device="cpu", n: int = None, seconds: float = 1.0) -> float:
    """GFLOP/s of an ``n``-cubed ``torch.mm`` in ``dtype`` on ``device``, here and now (median of repeats).
    ``n`` defaults to 2048 on a CPU and 8192 on a GPU, where a 2048-cubed product is too short to fill the chip."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward), by ``torch.utils.flop_counter``'s formulas:
    matrix multiplies, convolutions and the attention cores (the fused SDPA kernels included).

    A dispatch mode of our own rather than ``FlopCounterMode``, whose per-module tracker asserts on a
    module that returns a parameter as it is (the audio adapter's positions in stage 2)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter():
        fn()
    return Counter.total


def profile_split(fn: Callable[[], object], device="cpu", regions=("optimizer",)) -> Dict[str, float]:
    """Seconds of one call of ``fn`` by kind, from the profiler's self times.

    ``gemm_s``: the ops of :data:`GEMM_OPS`; ``other_s``: every other op; ``total_s``: their sum; for
    each name in ``regions`` (``record_function`` labels, such as fairseq's ``optimizer``), the
    region's own total in ``<name>_s``.  CPU self times on the CPU, device times on a GPU (the ops' own device
    time: the kernels they launched).
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    gemm = other = 0.0
    region_s = {f"{name}_s": 0.0 for name in regions}
    for event in prof.key_averages():
        if device.type == "cuda" and event.device_type != torch.autograd.DeviceType.CPU:
            continue  # a kernel's own row: its time is already its launching op's self device time
        if event.key in regions:
            region_s[f"{event.key}_s"] += (event.device_time_total if device.type == "cuda"
                                           else event.cpu_time_total) / 1e6
            continue
        own = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        if event.key in GEMM_OPS:
            gemm += own
        else:
            other += own
    return dict(gemm_s=gemm, other_s=other, total_s=gemm + other, **region_s)
