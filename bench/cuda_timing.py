"""CUDA timing for the kernel benchmarks (bench/attention.py, bench/layer_norm.py).

The code lives in the package (``one_peace.models.kernels.timing``) so that the GPU
self-check (``python -m one_peace.models.kernels_self_check``) measures the same way.
"""
from one_peace.models.kernels.timing import cuda_time_ms, time_forward_backward  # noqa: F401
