"""fairseq's Adam through one fused kernel (optim/fused_adam.py): the same updates and state as fairseq's
own loop, for fp32 parameters (fp32 training and --bf16's master weights) and bf16 parameters
(--memory-efficient-bf16), with weight decay, several groups and a resumed state."""
import pytest
import torch
from fairseq.optim import adam as fairseq_adam

import one_peace.fairseq_glue.compat  # noqa: F401 -- installs the fused step
from one_peace.optim import master_weights
from one_peace.optim.fused_adam import fused_adam_step


def _original_step():
    step = fairseq_adam.Adam.step
    assert getattr(step, "one_peace_patched", False), "importing the fairseq glue installs the fused step"
    return step.fairseq_step


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(37, 5), (64,), (3, 7, 11), (1,)]
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 2).to(dtype)) for s in shapes]


def _run(params, step_fn, grads, groups):
    opt = fairseq_adam.Adam([{"params": params[:2], **groups[0]}, {"params": params[2:], **groups[1]}],
                            lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    for grad_set in grads:
        for p, g in zip(params, grad_set):
            p.grad = g.to(p.dtype).clone()
        step_fn(opt)
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_step_equals_fairseqs_loop(dtype):
    g = torch.Generator().manual_seed(1)
    shapes = [p.shape for p in _params(dtype)]
    # Small and large gradients: eps matters for the small ones, where its placement would show.
    grads = [[torch.randn(s, generator=g) * scale for s in shapes] for scale in (1e-1, 1e-7, 3.0, 1e-5)]
    groups = [dict(weight_decay=0.05), dict(weight_decay=0.0, lr=3e-3)]
    ours, theirs = _params(dtype), _params(dtype)
    opt_ours = _run(ours, lambda o: o.step(), grads, groups)
    opt_theirs = _run(theirs, _original_step(), grads, groups)
    for a, b, start in zip(ours, theirs, _params(dtype)):
        assert not torch.equal(a.data, start.data), "the parameters moved"
        if dtype == torch.float32:
            torch.testing.assert_close(a.data, b.data, rtol=2e-6, atol=2e-7)
        else:  # the same float32 update, rounded to bf16 once: at most one bf16 step apart
            assert ((a.data.float() - b.data.float()).abs() <= b.data.float().abs() * 2 ** -7 + 1e-30).all()
        sa, sb = opt_ours.state[a], opt_theirs.state[b]
        assert sa["step"] == sb["step"] == 4
        assert sa["exp_avg"].dtype == sb["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-6, atol=1e-20)


def test_state_moves_between_fused_and_fairseq_steps():
    """A checkpoint's optimizer state written by one runs on with the other (same layout)."""
    g = torch.Generator().manual_seed(2)
    shapes = [p.shape for p in _params(torch.float32)]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]
    groups = [dict(weight_decay=0.01), dict(weight_decay=0.01)]
    mixed, plain = _params(torch.float32), _params(torch.float32)
    opt_mixed = _run(mixed, _original_step(), grads[:2], groups)
    state = opt_mixed.state_dict()
    resumed = fairseq_adam.Adam([{"params": mixed[:2], **groups[0]}, {"params": mixed[2:], **groups[1]}],
                                lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    resumed.load_state_dict(state)
    for grad_set in grads[2:]:
        for p, gr in zip(mixed, grad_set):
            p.grad = gr.clone()
        resumed.step()
    _run(plain, _original_step(), grads, groups)
    for a, b in zip(mixed, plain):
        torch.testing.assert_close(a.data, b.data, rtol=2e-6, atol=2e-7)
    assert all(resumed.state[p]["step"] == 4 for p in mixed)


def test_parameters_without_gradients_are_left_alone():
    params = _params(torch.float32)
    before = [p.data.clone() for p in params]
    opt = fairseq_adam.Adam(params, lr=1e-2, weight_decay=0.1)
    params[0].grad = torch.ones_like(params[0])
    fused_adam_step(opt)
    assert not torch.equal(params[0].data, before[0])
    assert all(torch.equal(p.data, b) for p, b in zip(params[1:], before[1:]))
    assert set(opt.state) == {params[0]}


def _bf16_optimizer(model, original_methods):
    from fairseq.optim import fp16_optimizer
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "common": {"bf16": True, "fp16_no_flatten_grads": False, "fp16_scale_window": None, "tpu": False,
                   "memory_efficient_bf16": False, "model_parallel_size": 1},
        "optimization": {"update_freq": [1], "lr": [1e-2]},
        "distributed_training": {"distributed_world_size": 1},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-8, "weight_decay": 0.01,
                      "lr": [1e-2], "use_old_adam": False, "fp16_adam_stats": False, "tpu": False}})
    cls = fp16_optimizer.FP16Optimizer
    if original_methods:  # fairseq's own methods, unpatched
        mixin = fp16_optimizer._FP16OptimizerMixin
        cls = type("FairseqFP16Optimizer", (cls,), {
            name: getattr(mixin, name).__wrapped__
            for name in ("_sync_fp16_grads_to_fp32", "_sync_fp32_params_to_fp16", "zero_grad")})
    opt = cls.build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    if original_methods:  # never in direct mode (optim/master_weights.py)
        opt._one_peace_direct_shape = False
    return opt


def _bf16_steps(original, steps=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)).to(torch.bfloat16)
    opt = _bf16_optimizer(model, original)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    norms = []
    for step in range(steps):
        opt.zero_grad()
        if step != 2:
            out = model(x) if step != 1 else model[0](x)  # step 1: the second layer gets no gradient
            opt.backward(out.float().square().sum())
        norms.append(opt.clip_grad_norm(0.5))
        opt.step()
    return model, opt, torch.stack(norms)


@pytest.fixture
def switch():
    from one_peace.models.kernels import switches

    yield switches.set_cpu_fused_impl
    switches.set_cpu_fused_impl(None)


@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_bf16_master_weights_step_as_fairseqs(impl, switch):
    """--bf16's fp32 masters: the same weights after steps with clipping, a parameter without a gradient
    in one step, and a step with no backward at all (its gradients are zeros, as fairseq gives).  ``auto``
    updates from the bf16 gradients in one C pass (direct mode), ``torch`` through float32 gradients."""
    switch(impl)
    (ours, opt, our_norms), (theirs, their_opt, their_norms) = _bf16_steps(False), _bf16_steps(True)
    assert master_weights.direct(opt) == (impl == "auto")
    # direct mode never makes the float32 gradients (and drops fairseq's initial ones)
    assert all((p32.grad is None) == (impl == "auto") for p32 in opt.fp32_params)
    torch.testing.assert_close(our_norms, their_norms, rtol=1e-6, atol=0)
    for a, b, ma, mb in zip(ours.parameters(), theirs.parameters(), opt.fp32_params, their_opt.fp32_params):
        if impl == "torch":
            assert torch.equal(a, b)
        # the same float32 update (masters within float rounding), each rounded to bf16 once
        torch.testing.assert_close(ma, mb, rtol=2e-6, atol=1e-7)
        assert ((a.float() - b.float()).abs() <= b.float().abs() * 2 ** -7 + 1e-30).all()
        assert torch.equal(a, ma.bfloat16())


def test_bf16_direct_mode_follows_the_switch_mid_run(switch):
    """Switching the kernels off between steps goes on through float32 gradients, which are made again."""
    model, opt, _ = _bf16_steps(False, steps=2)
    assert master_weights.direct(opt) and all(p32.grad is None for p32 in opt.fp32_params)
    switch("torch")
    opt.zero_grad()
    opt.backward(model(torch.ones(2, 6, dtype=torch.bfloat16)).float().sum())
    opt.clip_grad_norm(0.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert not master_weights.direct(opt)
    assert all(p32.grad is not None for p32 in opt.fp32_params)
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(torch.equal(p, p32.bfloat16()) for p, p32 in zip(model.parameters(), opt.fp32_params))


def test_transposed_weights_and_gradients_get_fairseqs_update():
    """torch's CPU kernel treats every tensor as contiguous: strided parameters and gradients go through
    copies (without them the update was off by ~5% of the weights here)."""
    base = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    for param_t, grad_t in ((True, False), (False, True), (True, True)):
        results = []
        for step_fn in (lambda o: o.step(), _original_step()):
            p = torch.nn.Parameter(base.t().contiguous().t().clone() if param_t else base.clone())
            assert p.is_contiguous() != param_t
            opt = fairseq_adam.Adam([p], lr=1e-2, weight_decay=0.05)
            for s in range(3):
                g = torch.randn(6, 8, generator=torch.Generator().manual_seed(s + 1))
                p.grad = g.t() if grad_t else g.t().contiguous()
                step_fn(opt)
            results.append(p.data.clone())
        torch.testing.assert_close(results[0], results[1], rtol=2e-6, atol=2e-7)


def test_bf16_wrapper_divides_its_factor_inside_the_step():
    """--bf16: fairseq's wrapper passes 1/sample_size times the clipping coefficient to the fused step as its
    scale instead of unscaling every float32 gradient first; the weights end within one bf16 step of the
    unscaling path's, over steps with and without clipping (the factor must not carry into the next step)."""
    runs = []
    for scaled in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3)).to(torch.bfloat16)
        opt = _bf16_optimizer(model, original_methods=False)
        if not scaled:  # fairseq's unscaling pass, then a step without scale
            opt.optimizer.supports_step_with_scale = False
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
        norms = []
        for factor in (0.25, 1.0, 0.5, 1.0):
            opt.zero_grad()
            opt.backward(model(x).float().square().sum())
            opt.multiply_grads(factor)
            norms.append(opt.clip_grad_norm(0.5))
            opt.step()
        runs.append(([p.detach().float().clone() for p in model.parameters()], torch.stack(norms)))
    (ours, our_norms), (theirs, their_norms) = runs
    assert (their_norms > 0.5).any() and (their_norms * 0.05 < 0.5).any(), "clipping was active in some steps"
    torch.testing.assert_close(our_norms, their_norms, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        assert ((a - b).abs() <= b.abs() * 2 ** -7 + 1e-30).all()
