"""CUDA timing shared by the GPU self-check (``models/kernels_self_check.py``) and the kernel benchmarks
(bench/attention.py and bench/layer_norm.py import it through bench/cuda_timing.py)."""
import statistics

import torch


def cuda_time_ms(fn, warmup, iters):
    """Median wall time of ``fn`` in milliseconds, measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_forward_backward(forward, leaves, warmup, iters):
    """(forward ms, forward+backward ms, peak MiB of one forward+backward above what was allocated)."""
    grad = torch.randn_like(forward())

    def fwd():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        torch.autograd.grad(forward(), leaves, grad)

    fwd_ms = cuda_time_ms(fwd, warmup, iters)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return fwd_ms, cuda_time_ms(fwd_bwd, warmup, iters), peak
