"""FusedLayerNorm (its Triton kernel forced with ``impl="fused"``): values and gradients vs float64 torch.

CPU: kernels under Triton's interpreter (``TRITON_INTERPRET=1`` set per test by the
``interpret`` fixture in conftest.py).  GPU: model-sized rows, compiled.
The model uses the kernel only when asked (``ONE_PEACE_LAYER_NORM=fused``).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kernel_helpers import needs_cuda, needs_triton

from one_peace.models.kernels import FusedLayerNorm, fused_layer_norm

# Max abs error relative to max(1, max |reference|).
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_close(actual, expected, dtype, name):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{name}: max abs err {err:.3e} > {TOL[dtype] * scale:.3e} ({dtype})"


def check_layer_norm(ln, x, dtype):
    y = ln(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    params = [p for p in (ln.weight, ln.bias) if p is not None]
    grads = torch.autograd.grad(y, [x] + params, g)
    xr = x.detach().double().requires_grad_()
    pr = [p.detach().double().requires_grad_() for p in params]
    w = pr[0] if ln.weight is not None else None
    b = pr[-1] if ln.bias is not None else None
    yr = F.layer_norm(xr, ln.normalized_shape, w, b, ln.eps)
    rgrads = torch.autograd.grad(yr, [xr] + pr, g.double())
    assert_close(y, yr, dtype, "y")
    for name, a, r in zip(["dx", "dweight", "dbias"], grads, rgrads):
        assert a.dtype == dtype, name
        assert_close(a, r, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 7, 16), (2, 5, 48), (2, 3, 1000), (1, 1, 1)])
def test_interpreter_layer_norm(interpret, dtype, shape):
    width = shape[-1]
    ln = FusedLayerNorm(width, eps=1e-5, impl="fused").to(dtype)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = (torch.randn(shape) * 3 + 1).to(dtype).requires_grad_()
    check_layer_norm(ln, x, dtype)


def test_interpreter_layer_norm_variants(interpret):
    # No affine, no bias, a non-contiguous (channels-last permuted) input, larger eps.
    x = torch.randn(2, 24, 3, 5).permute(0, 2, 3, 1).requires_grad_()  # (2, 3, 5, 24), strided
    check_layer_norm(FusedLayerNorm(24, elementwise_affine=False, impl="fused"), x, torch.float32)
    ln = FusedLayerNorm(24, bias=False, eps=1e-2, impl="fused")
    with torch.no_grad():
        ln.weight.normal_()
    check_layer_norm(ln, x, torch.float32)
    # Two normalized dims without affine parameters: the row width is 3 * 8, not the last dim.
    check_layer_norm(FusedLayerNorm((3, 8), elementwise_affine=False, impl="fused"),
                     torch.randn(4, 3, 8, requires_grad=True), torch.float32)
    # Two normalized dims through the functional form.
    w = torch.randn(3, 8, requires_grad=True)
    b = torch.randn(3, 8, requires_grad=True)
    x2 = torch.randn(4, 3, 8, requires_grad=True)
    y = fused_layer_norm(x2, w, b, 1e-5)
    yr = F.layer_norm(x2.double(), (3, 8), w.double(), b.double(), 1e-5)
    assert_close(y, yr, torch.float32, "y2")
    gx, gw = torch.autograd.grad(y.sum() + (y * y).sum(), (x2, w))
    rx, rw = torch.autograd.grad(yr.sum() + (yr * yr).sum(), (x2, w))
    assert_close(gx, rx, torch.float32, "dx2")
    assert_close(gw, rw, torch.float32, "dw2")


def test_interpreter_mixed_dtype_weight(interpret):
    # fp32 parameters with a half input (as under CUDA autocast without the cast).
    ln = FusedLayerNorm(32, impl="fused")
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(4, 6, 32).to(torch.bfloat16).requires_grad_()
    y = ln(x)
    assert y.dtype == torch.bfloat16
    yr = F.layer_norm(x.double(), (32,), ln.weight.double(), ln.bias.double())
    assert_close(y, yr, torch.bfloat16, "y")
    dx, dw = torch.autograd.grad(y.float().sum(), (x, ln.weight))
    assert dx.dtype == torch.bfloat16 and dw.dtype == torch.float32


def test_drop_in_replacement(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = nn.LayerNorm(12, eps=1e-6)
    fused = FusedLayerNorm(12, eps=1e-6)
    assert isinstance(fused, nn.LayerNorm)
    assert list(fused.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 12)
    # CPU without the interpreter: exactly torch's layer_norm.
    assert torch.equal(fused(x), ref(x))
    assert fused.eps == 1e-6 and fused.normalized_shape == (12,)


def test_switch_selects_the_kernel(interpret, monkeypatch):
    """FusedLayerNorm() follows ONE_PEACE_LAYER_NORM / set_layer_norm_impl (default torch);
    impl= on the module overrides the switch."""
    from one_peace.models.kernels import invalidate_kernel_caches, set_layer_norm_impl
    from one_peace.models.kernels import layer_norm as ln_mod

    calls = []
    real = ln_mod._kernel_layer_norm
    monkeypatch.setattr(ln_mod, "_kernel_layer_norm", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, 16)
    default, forced_torch, forced_fused = FusedLayerNorm(16), FusedLayerNorm(16, impl="torch"), \
        FusedLayerNorm(16, impl="fused")
    try:
        invalidate_kernel_caches()
        assert torch.equal(default(x), F.layer_norm(x, (16,), default.weight, default.bias))
        forced_torch(x)
        assert not calls
        forced_fused(x)
        assert len(calls) == 1
        monkeypatch.setenv("ONE_PEACE_LAYER_NORM", "fused")
        default(x)
        assert len(calls) == 1  # resolved before the variable changed: cached
        invalidate_kernel_caches()
        default(x)
        forced_torch(x)
        assert len(calls) == 2
        set_layer_norm_impl("torch")  # the forced choice wins over the environment
        default(x)
        assert len(calls) == 2
        set_layer_norm_impl("fused")
        default(x[:0])  # empty input: nothing to launch
        assert len(calls) == 2
    finally:
        set_layer_norm_impl(None)
    with pytest.raises(ValueError, match="impl must be"):
        FusedLayerNorm(4, impl="apex")


# ---------------------------------------------------------------- GPU (compiled kernels)

@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("width", [1536, 6144, 768])
def test_gpu_layer_norm(compiled, dtype, width):
    ln = FusedLayerNorm(width, impl="fused").to("cuda", dtype)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = (torch.randn(8, 577, width, device="cuda") * 2 + 0.5).to(dtype).requires_grad_()
    check_layer_norm(ln, x, dtype)


@needs_cuda
@needs_triton
def test_gpu_layer_norm_autocast(compiled):
    ln = FusedLayerNorm(1536, impl="fused").cuda()
    x = torch.randn(4, 257, 1536, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        y = ln(x)
        yr = F.layer_norm(x, (1536,), ln.weight, ln.bias)
    assert y.dtype == yr.dtype == torch.float32
    assert_close(y, yr.double(), torch.float32, "y")
