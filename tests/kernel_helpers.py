"""The fused attention kernels' test helpers: markers, tolerances, the float64 reference and inputs.
Shared by ``test_kernels.py``, ``test_kernel_dispatch.py``, ``test_kernels_gpu.py`` and
``test_layer_norm_kernel.py``; the ``interpret`` and ``compiled`` fixtures are in ``conftest.py``."""
import pytest
import torch

from one_peace.models.kernels import fused_attention, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
_skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


def needs_cuda(test):  # the project's ``gpu`` marker + skipped (with the reason) without CUDA
    return pytest.mark.gpu(_skip_no_cuda(test))


# Max abs error allowed, relative to max(1, max |reference|): a few units of the dtype's
# rounding step (fp32 runs exact dots in the interpreter; half rounds P and dS).
TOL = {torch.float32: 2e-5, torch.float16: 6e-3, torch.bfloat16: 4.7e-2}


def reference(q, k, v, bias=None, key_padding_mask=None, dtype=torch.float64):
    scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2)
    if bias is not None:
        scores = scores + bias.to(dtype)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.to(dtype)


def make_mask(kind, batch, seq, device="cpu"):
    if kind == "none":
        return None
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    if kind == "rows":  # the last sample has its last third padded
        mask[-1, seq - seq // 3:] = True
    elif kind == "first_only":  # the first sample keeps only its first key
        mask[0, 1:] = True
        mask[-1, seq - seq // 2:] = True
    else:
        raise ValueError(kind)
    return mask


def make_inputs(batch, heads, seq, dim, dtype, bias_kind, device="cpu", seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()

    q = rand(batch, heads, seq, dim, scale=dim ** -0.5 * 2)  # pre-scaled q, somewhat peaky softmax
    k, v = rand(batch, heads, seq, dim), rand(batch, heads, seq, dim)
    bias_shape = {None: None, "bcast": (1, heads, seq, seq), "batch": (batch, heads, seq, seq),
                  "bcast_all": (1, 1, seq, seq), "2d": (seq, seq)}[bias_kind]
    bias = rand(*bias_shape) if bias_shape is not None else None
    return q, k, v, bias


def assert_close(actual, expected, dtype, name):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{name}: max abs err {err:.3e} > {TOL[dtype] * scale:.3e} ({dtype})"


def check_against_reference(q, k, v, bias, mask, dtype, bias_dtype=None):
    out = fused_attention(q, k, v, bias=bias, key_padding_mask=mask)
    assert out.dtype == q.dtype and out.shape == q.shape
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    inputs = [t for t in (q, k, v, bias) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, inputs, grad_out)

    leaves = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None for t in (q, k, v, bias)]
    ref = reference(*leaves, key_padding_mask=mask)
    ref_inputs = [t for t in leaves if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out.double())

    assert_close(out, ref, dtype, "out")
    names = ["dq", "dk", "dv", "dbias"]
    for name, g, rg, t in zip(names, grads, ref_grads, inputs):
        assert g.dtype == t.dtype, f"{name} dtype {g.dtype} != {t.dtype}"
        assert_close(g, rg, bias_dtype if (name == "dbias" and bias_dtype) else dtype, name)
    return out, grads
