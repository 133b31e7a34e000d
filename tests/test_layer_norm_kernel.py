"""FusedLayerNorm and fused_residual_gamma_add: values and gradients vs float64 torch.

CPU: kernels under Triton's interpreter (``TRITON_INTERPRET=1`` set per test by the
``interpret`` fixture; see tests/test_kernels.py).  GPU: model-sized rows, compiled.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from one_peace.models.kernels import FusedLayerNorm, fused_layer_norm, fused_residual_gamma_add, triton_available
from one_peace.models.kernels.layer_norm import residual_gamma_add_reference

_skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


def needs_cuda(test):  # the project's ``gpu`` marker + skipped (with the reason) without CUDA
    return pytest.mark.gpu(_skip_no_cuda(test))
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

# Max abs error relative to max(1, max |reference|).
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def interpret(monkeypatch):
    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


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
    ln = FusedLayerNorm(width, eps=1e-5).to(dtype)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = (torch.randn(shape) * 3 + 1).to(dtype).requires_grad_()
    check_layer_norm(ln, x, dtype)


def test_interpreter_layer_norm_variants(interpret):
    # No affine, no bias, a non-contiguous (channels-last permuted) input, larger eps.
    x = torch.randn(2, 24, 3, 5).permute(0, 2, 3, 1).requires_grad_()  # (2, 3, 5, 24), strided
    check_layer_norm(FusedLayerNorm(24, elementwise_affine=False), x, torch.float32)
    ln = FusedLayerNorm(24, bias=False, eps=1e-2)
    with torch.no_grad():
        ln.weight.normal_()
    check_layer_norm(ln, x, torch.float32)
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
    ln = FusedLayerNorm(32)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_gamma,with_scale", [(True, True), (True, False), (False, True), (False, False)])
def test_interpreter_residual(interpret, dtype, with_gamma, with_scale):
    gen = torch.Generator().manual_seed(2)
    B, S, D = 3, 5, 40
    r = torch.randn(B, S, D, generator=gen).to(dtype).requires_grad_()
    x = torch.randn(B, S, D, generator=gen).to(dtype).requires_grad_()
    gamma = torch.randn(D, generator=gen).to(dtype).requires_grad_() if with_gamma else None
    scale = torch.tensor([0.0, 1.0 / 0.75, 1.0 / 0.75]) if with_scale else None
    out = fused_residual_gamma_add(r, x, gamma, scale)
    assert out.dtype == dtype
    g = torch.randn(out.shape, generator=gen).to(dtype)
    inputs = [t for t in (r, x, gamma) if t is not None]
    grads = torch.autograd.grad(out, inputs, g)
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (r, x, gamma)]
    ref = residual_gamma_add_reference(*leaves, scale.double() if scale is not None else None)
    rgrads = torch.autograd.grad(ref, [t for t in leaves if t is not None], g.double())
    assert_close(out, ref, dtype, "out")
    for name, a, rr, t in zip(["dresidual", "dx", "dgamma"], grads, rgrads, inputs):
        assert a.dtype == t.dtype, name
        assert_close(a, rr, dtype, name)
    if with_scale:  # dropped sample: its branch contributes nothing
        assert torch.equal(out[0], r[0].detach()) and grads[1][0].abs().max() == 0


def test_interpreter_residual_type_promotion(interpret):
    # fp32 gamma with a half branch promotes the sum to fp32, as ``residual + gamma * x`` does.
    r = torch.randn(2, 3, 16, dtype=torch.float16)
    x = torch.randn(2, 3, 16, dtype=torch.float16, requires_grad=True)
    gamma = torch.randn(16, requires_grad=True)
    out = fused_residual_gamma_add(r, x, gamma)
    ref = residual_gamma_add_reference(r, x, gamma)
    assert out.dtype == ref.dtype == torch.float32
    assert_close(out, ref.double(), torch.float16, "out")
    dx, dg = torch.autograd.grad(out.sum(), (x, gamma))
    rdx, rdg = torch.autograd.grad(ref.sum(), (x, gamma))
    assert dx.dtype == torch.float16 and dg.dtype == torch.float32
    assert_close(dx, rdx, torch.float16, "dx")
    assert_close(dg, rdg, torch.float16, "dgamma")


def test_residual_fallback_and_errors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r, x, g = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(8)
    scale = torch.tensor([0.0, 2.0])
    assert torch.equal(fused_residual_gamma_add(r, x, g, scale), r + (g * x) * scale[:, None, None])
    with pytest.raises(ValueError, match="gamma"):
        fused_residual_gamma_add(r, x, torch.randn(7))
    with pytest.raises(ValueError, match="drop_path_scale"):
        fused_residual_gamma_add(r, x, g, torch.ones(3))


# ---------------------------------------------------------------- GPU (compiled kernels)

@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("width", [1536, 6144, 768])
def test_gpu_layer_norm(compiled, dtype, width):
    ln = FusedLayerNorm(width).to("cuda", dtype)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = (torch.randn(8, 577, width, device="cuda") * 2 + 0.5).to(dtype).requires_grad_()
    check_layer_norm(ln, x, dtype)


@needs_cuda
@needs_triton
def test_gpu_layer_norm_autocast(compiled):
    ln = FusedLayerNorm(1536).cuda()
    x = torch.randn(4, 257, 1536, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        y = ln(x)
        yr = F.layer_norm(x, (1536,), ln.weight, ln.bias)
    assert y.dtype == yr.dtype == torch.float32
    assert_close(y, yr.double(), torch.float32, "y")


@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_residual(compiled, dtype):
    B, S, D = 8, 577, 1536
    r = torch.randn(B, S, D, device="cuda", dtype=dtype, requires_grad=True)
    x = torch.randn(B, S, D, device="cuda", dtype=dtype, requires_grad=True)
    gamma = (torch.rand(D, device="cuda") * 0.1).to(dtype).requires_grad_()
    scale = (torch.rand(B, device="cuda") > 0.3).float() / 0.7
    out = fused_residual_gamma_add(r, x, gamma, scale)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (r, x, gamma), g)
    leaves = [t.detach().double().requires_grad_() for t in (r, x, gamma)]
    ref = residual_gamma_add_reference(*leaves, scale.double())
    rgrads = torch.autograd.grad(ref, leaves, g.double())
    assert_close(out, ref, dtype, "out")
    for name, a, rr in zip(["dresidual", "dx", "dgamma"], grads, rgrads):
        assert_close(a, rr, dtype, name)
