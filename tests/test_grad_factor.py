"""fairseq's gradient factors (1/sample_size, the clipping coefficient) folded into the fused Adam step
(optim/grad_factor.py): the same gradient norm and the same update as fairseq's passes over the gradients,
which are left untouched until the step; nothing carries over a skipped step."""
import pytest
import torch
from fairseq.optim import fp16_optimizer
from fairseq.optim.adam import FairseqAdam
from omegaconf import OmegaConf

import one_peace.fairseq_glue.compat  # noqa: F401 -- installs the fused step and the deferral
from one_peace.optim.grad_factor import apply_pending_factor, pending_factor

OPTIMIZER = {"_name": "adam", "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-8, "weight_decay": 0.01, "lr": [1e-2],
             "use_old_adam": False, "fp16_adam_stats": False, "tpu": False}


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3)).to(dtype)


def _fp32_optimizer(model, deferred):
    opt = FairseqAdam(OmegaConf.create(OPTIMIZER), list(model.parameters()))
    if not deferred:  # fairseq's own passes: the step takes no scale
        opt.optimizer.supports_step_with_scale = False
    return opt


def _bf16_optimizer(model, deferred):
    cfg = OmegaConf.create({
        "common": {"bf16": True, "fp16_no_flatten_grads": False, "fp16_scale_window": None, "tpu": False,
                   "memory_efficient_bf16": False, "model_parallel_size": 1},
        "optimization": {"update_freq": [1], "lr": [1e-2]},
        "distributed_training": {"distributed_world_size": 1}, "optimizer": OPTIMIZER})
    opt = fp16_optimizer.FP16Optimizer.build_optimizer(cfg, list(model.parameters()))
    if not deferred:  # fairseq unscales the float32 gradients in a pass of its own
        opt.optimizer.supports_step_with_scale = False
    return opt


def _train(dtype, build, deferred, factors=(0.25, 1.0, 0.5), clip=0.5):
    """The trainer's sequence per step: backward, multiply_grads(world / sample_size), clip_grad_norm, step."""
    model = _model(dtype)
    opt = build(model, deferred)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    norms, grads_before_step = [], []
    for factor in factors:
        opt.zero_grad()
        opt.backward(model(x).float().square().sum())
        raw = [p.grad.clone() for p in model.parameters()]
        opt.multiply_grads(factor)
        norms.append(opt.clip_grad_norm(clip))
        grads_before_step.append(all(torch.equal(p.grad, r) for p, r in zip(model.parameters(), raw)))
        opt.step()
    return [p.detach().clone() for p in model.parameters()], torch.stack(norms), grads_before_step, opt


def test_fp32_factors_folded_into_the_step():
    ours, our_norms, untouched, opt = _train(torch.float32, _fp32_optimizer, deferred=True)
    theirs, their_norms, touched, _ = _train(torch.float32, _fp32_optimizer, deferred=False)
    assert (their_norms > 0.5).any() and (their_norms * 0.1 < 0.5).any(), "clipping was active"
    torch.testing.assert_close(our_norms, their_norms, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all(untouched), "the gradients are not multiplied before the step (no pass over them)"
    assert not any(touched), "fairseq's own path multiplies them in place"
    assert pending_factor(opt) == 1.0


def test_bf16_wrapper_passes_its_factor_as_scale():
    """--bf16: fairseq's wrapper divides inside the fused step instead of unscaling the float32 gradients."""
    ours, our_norms, _, opt = _train(torch.bfloat16, _bf16_optimizer, deferred=True)
    theirs, their_norms, _, _ = _train(torch.bfloat16, _bf16_optimizer, deferred=False)
    torch.testing.assert_close(our_norms, their_norms, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):  # float32 masters within float rounding, rounded to bf16: at most one step apart
        assert ((a.float() - b.float()).abs() <= b.float().abs() * 2 ** -7 + 1e-30).all()
    assert opt.fp32_optimizer.optimizer.state, "the fused step ran"


def test_a_skipped_step_leaves_no_factor_behind():
    """A step abandoned after multiply_grads (an OOM, a NaN norm) is followed by zero_grad: the next step
    gets only its own factor."""
    model = _model(torch.float32)
    opt = _fp32_optimizer(model, deferred=True)
    opt.backward(model(torch.ones(2, 6)).sum())
    opt.multiply_grads(0.125)
    assert pending_factor(opt) == 0.125
    opt.zero_grad()
    assert pending_factor(opt) == 1.0


def test_readers_of_the_gradients_get_them_multiplied():
    model = _model(torch.float32)
    opt = _fp32_optimizer(model, deferred=True)
    opt.backward(model(torch.ones(2, 6)).sum())
    raw = [p.grad.clone() for p in model.parameters()]
    opt.multiply_grads(0.25)
    apply_pending_factor(opt)
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p.grad, r * 0.25)
    assert pending_factor(opt) == 1.0


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_optimizers_without_a_scaled_step_keep_fairseqs_passes(factor):
    model = _model(torch.float32)
    opt = _fp32_optimizer(model, deferred=False)
    opt.backward(model(torch.ones(2, 6)).sum())
    raw = [p.grad.clone() for p in model.parameters()]
    opt.multiply_grads(factor)
    assert pending_factor(opt) == 1.0
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p.grad, r * factor)
