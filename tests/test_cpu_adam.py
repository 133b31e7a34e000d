"""The one-pass bf16 Adam kernel (models/kernels/cpu_adam.py): fairseq's update in float, for --bf16's masters
and --memory-efficient-bf16's bf16 weights, with and without a gradient; and its refusals."""
import math

import pytest
import torch
from fairseq.optim import adam as fairseq_adam

import one_peace.fairseq_glue.compat  # noqa: F401 -- installs the fused step
from one_peace.models.kernels import cpu_adam, cpu_build, switches

HYPER = dict(lr=3e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.05, step=5, grad_scale=8.0)


@pytest.fixture
def switch():
    yield switches.set_cpu_fused_impl
    switches.set_cpu_fused_impl(None)


def _state(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, generator=gen).bfloat16()
    grad = (torch.randn(n, generator=gen) * 4).bfloat16()
    return weight, grad, torch.randn(n, generator=gen) * 0.3, torch.rand(n, generator=gen) * 0.2


def _fairseqs_ops(p, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    """fairseq's Adam (fairseq/optim/adam.py) as its torch ops on float32 copies, in its order, after the
    wrapper's multiply_grads; only the sqrt is taken correctly rounded (through float64), as the kernel's is."""
    p, m, v = p.float().clone(), m.clone(), v.clone()
    g = torch.zeros_like(p) if grad is None else grad.float().mul_(1.0 / grad_scale)
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = v.double().sqrt().float().add_(eps)
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    if weight_decay != 0:
        p.add_(p, alpha=-weight_decay * lr)
    return p.addcdiv_(m, denom, value=-step_size), m, v


@pytest.mark.parametrize("n", [1, 37, 8192 * 3 + 5])
@pytest.mark.parametrize("with_grad", [True, False])
@pytest.mark.parametrize("with_master", [True, False])
def test_the_kernel_is_fairseqs_update_to_the_bit(n, with_grad, with_master):
    weight, grad, m, v = _state(n)
    master = weight.float() if with_master else None
    for step in (1, 2, 5):  # each step from the last one's state, as training runs
        hyper = {**HYPER, "step": step}
        ref_p, ref_m, ref_v = _fairseqs_ops(weight if master is None else master, grad if with_grad else None, m,
                                            v, **hyper)
        cpu_adam.adam_step_bf16([weight], [grad if with_grad else None], [master], [m], [v], **hyper)
        assert torch.equal(m, ref_m) and torch.equal(v, ref_v)
        assert torch.equal(weight, ref_p.bfloat16()), "the bf16 weight is the new value rounded once"
        if with_master:
            assert torch.equal(master, ref_p)
    # and the formula itself, against float64, from the state reached
    start = master if with_master else weight.float()
    ref = cpu_adam._reference(start.double(), grad.double() if with_grad else None, m.double(), v.double(), **HYPER)
    w, p32, m32, v32 = weight.clone(), start.clone() if with_master else None, m.clone(), v.clone()
    cpu_adam.adam_step_bf16([w], [grad if with_grad else None], [p32], [m32], [v32], **HYPER)
    # atol: float rounding of terms up to ~1 in size, where m cancels to near zero
    torch.testing.assert_close(m32.double(), ref[1], rtol=2e-6, atol=2e-7)
    torch.testing.assert_close(v32.double(), ref[2], rtol=2e-6, atol=2e-7)
    if with_master:
        torch.testing.assert_close(p32.double(), ref[0], rtol=2e-6, atol=5e-7)
    else:  # rounded to bf16 once: within half a bf16 step of the exact value
        assert ((w.double() - ref[0]).abs() <= ref[0].abs() * 2 ** -8 * 1.01 + 1e-30).all()


def test_threads_do_not_change_the_result():
    results = []
    for threads in (1, 2):
        weight, grad, m, v = _state(8192 * 5 + 3, seed=1)
        master = weight.float()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            cpu_adam.adam_step_bf16([weight], [grad], [master], [m], [v], **HYPER)
        finally:
            torch.set_num_threads(before)
        results.append((weight, master, m, v))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_unsupported_tensors_are_named():
    weight, grad, m, v = _state(12)
    ok = (weight, grad, None, m, v)
    for i, bad, message in (
            (0, weight.float(), "the weight and its gradient must be contiguous bf16"),
            (0, torch.zeros(24, dtype=torch.bfloat16)[::2], "the weight and its gradient must be contiguous bf16"),
            (1, torch.zeros(24, dtype=torch.bfloat16)[::2], "the weight and its gradient must be contiguous bf16"),
            (3, m.double(), "the master weight and the moments must be contiguous float32"),
            (4, v[:6], "shapes differ")):
        tensors = list(ok)
        tensors[i] = bad
        with pytest.raises(ValueError, match=f"parameter 1: {message}"):  # names the parameter
            cpu_adam.adam_step_bf16(*[[o, t] for o, t in zip(ok, tensors)], **HYPER)


def _bf16_params():
    gen = torch.Generator().manual_seed(3)
    # a transposed (non-contiguous) weight goes through torch's path, the others through the kernel
    return [torch.nn.Parameter(torch.randn(s, generator=gen).bfloat16()) for s in ((9, 7), (7,))] + \
        [torch.nn.Parameter(torch.randn(5, 6, generator=gen).bfloat16().t())]


def _memory_efficient_steps(params):
    opt = fairseq_adam.Adam(params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).bfloat16()
        opt.step(scale=4.0)
    return opt


def test_memory_efficient_bf16_updates_through_the_kernel(switch, monkeypatch):
    """--memory-efficient-bf16's bf16 parameters: the kernel updates the contiguous ones in place, within one
    bf16 rounding of torch's path through float32 copies, with the same optimizer state."""
    calls = []
    kernel = cpu_adam.adam_step_bf16
    monkeypatch.setattr(cpu_adam, "adam_step_bf16",
                        lambda *a, **k: calls.append([w.shape for w in a[0]]) or kernel(*a, **k))
    switch("torch")
    theirs = _bf16_params()
    their_opt = _memory_efficient_steps(theirs)
    assert calls == []
    switch("auto")
    ours = _bf16_params()
    our_opt = _memory_efficient_steps(ours)
    assert calls == [[torch.Size([9, 7]), torch.Size([7])]] * 3  # one call per step
    for a, b in zip(ours, theirs):
        assert not a.is_contiguous() or torch.equal(a, b) or \
            ((a.float() - b.float()).abs() <= b.float().abs() * 2 ** -7 + 1e-30).all()
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(our_opt.state[a][key], their_opt.state[b][key], rtol=2e-6, atol=1e-9)


def test_a_demanded_kernel_that_cannot_build_names_the_switch(switch, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(tmp_path))
    cpu_build.forget()
    try:
        switch("auto")
        assert not cpu_adam.available()  # torch's ops, with a warning
        switch("fused")
        with pytest.raises(RuntimeError, match="ONE_PEACE_CPU_FUSED=fused .*no-such-cc"):
            cpu_adam.available()
    finally:
        cpu_build.forget()


def test_norms_are_torchs_and_do_not_depend_on_the_threads():
    gen = torch.Generator().manual_seed(5)
    tensors = [(torch.randn(n, generator=gen) * s).bfloat16() for n, s in ((1, 1), (37, 1e-3), (8192 * 3 + 5, 30))]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(cpu_adam.norms_bf16(tensors))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*results) and results[0].dtype == torch.float32
    exact = torch.stack([t.double().norm() for t in tensors])
    theirs = torch.stack([torch.norm(t, p=2, dtype=torch.float32) for t in tensors])  # what fairseq computes
    # float sums per block of 8192: within 1e-6 of the exact norm, and no farther from it than torch's float32 norm
    ours = results[0].double()
    torch.testing.assert_close(ours, exact, rtol=1e-6, atol=0)
    assert ((ours - exact).abs() <= (theirs.double() - exact).abs() + 1e-12).all()
    with pytest.raises(ValueError, match="tensor 1 is not a contiguous bf16 CPU tensor"):
        cpu_adam.norms_bf16([tensors[0], tensors[2].float()])


def test_memory_efficient_clipping_takes_fairseqs_norm(switch):
    """--memory-efficient-bf16's clip_grad_norm through the one-call norms: fairseq's norm and clipping factor."""
    from fairseq.optim import fp16_optimizer
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "common": {"bf16": True, "fp16_scale_window": None, "model_parallel_size": 1},
        "optimization": {"update_freq": [1]}, "distributed_training": {"distributed_world_size": 1},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-8, "weight_decay": 0.01,
                      "lr": [1e-2], "use_old_adam": False, "fp16_adam_stats": False, "tpu": False}})
    results = []
    for patched in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)).to(torch.bfloat16)
        opt = fp16_optimizer.MemoryEfficientFP16Optimizer.build_optimizer(cfg, list(model.parameters()))
        clip = type(opt).clip_grad_norm if patched else type(opt).clip_grad_norm.__wrapped__
        opt.backward(model(torch.randn(4, 6).bfloat16()).float().square().sum())
        opt.multiply_grads(0.5)
        norm = clip(opt, 0.1)
        results.append((norm, opt._multiply_factor))
    (norm, factor), (their_norm, their_factor) = results
    assert their_norm * 0.5 > 0.1, "clipping was active"
    torch.testing.assert_close(norm, their_norm, rtol=1e-6, atol=0)
    torch.testing.assert_close(factor, their_factor, rtol=1e-6, atol=0)


def test_empty_parameters_are_no_work():
    empty = [torch.empty(0, dtype=torch.bfloat16)]
    cpu_adam.adam_step_bf16(empty, [torch.empty(0, dtype=torch.bfloat16)], None, [torch.empty(0)],
                            [torch.empty(0)], **HYPER)
    assert cpu_adam.norms_bf16(empty).tolist() == [0.0]
