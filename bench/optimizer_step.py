"""The optimizer's share of a bf16 training step: fairseq's wrapper through float32 gradients against one pass.

With ``--bf16`` each update copies every bf16 gradient into a float32 twin, runs Adam on the float32 masters
and copies them back into the bf16 model; the one-pass kernel (``models/kernels/cpu_adam.py``, the wrapper's
direct mode in ``optim/master_weights.py``) reads the bf16 gradients and writes the bf16 weights itself.  With
``--memory-efficient-bf16`` the bf16 weights are updated through float32 copies of the weight and gradient, or
by the kernel in place.

The script builds ``bench/pretrain.py``'s trainer (``fairseq-train``'s flags and optimizer wrappers) and times
what a train step does after the backward: ``multiply_grads``, ``clip_grad_norm``, ``step`` and
``zero_grad``, with the kernels off (``ONE_PEACE_CPU_FUSED=torch``) and on, alternated in one process.  The
gradients are random bf16 tensors on the parameters that a step of that stage gives one (found from one fp32
step of the tiny model); the others get none, as stage 1's audio branch.  The update's cost does not depend on
the values, and needs no forward pass: this runs on a CPU without bf16 matrix units too.

    python bench/optimizer_step.py --arch base --stage 1 --precision bf16 --steps 8
    python bench/optimizer_step.py --arch base --stage 1 --precision bf16-memory-efficient --steps 8
"""
import argparse
import os
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402 -- the trainer as bench/pretrain.py builds it


def _trainer(args, arch, precision):
    d = pretrain.DEFAULTS[arch]
    batch = d["batch_size"] if args.stage == 1 else d["audio_batch_size"]
    ns = argparse.Namespace(arch=arch, stage=args.stage, precision=precision, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = pretrain.write_data(args.stage, batch, d["image_size"], d["audio_seconds"], tmp)
        return pretrain.fairseq_trainer(ns, data, batch, d["image_size"], d["audio_seconds"])


def names_with_gradients(args):
    """The parameters that one step of this stage gives a gradient (one fp32 step of the tiny model)."""
    trainer, model, sample, _ = _trainer(args, "tiny", "fp32")
    trainer.model.train()
    loss, sample_size, _ = trainer.criterion(trainer.model, sample)
    loss.backward()
    return {_per_layer(name) for name, p in model.named_parameters() if p.grad is not None}


def _per_layer(name):
    """The name with its layer numbers taken out: the tiny model has fewer layers than the one measured."""
    return re.sub(r"\.\d+\.", ".N.", name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(pretrain.DEFAULTS), default="base")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--precision", choices=("bf16", "bf16-memory-efficient"), default="bf16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    from one_peace.models.kernels import switches

    with_grads = names_with_gradients(args)
    trainer, model, _, _ = _trainer(args, args.arch, args.precision)
    gen = torch.Generator().manual_seed(0)
    grads = {p: (torch.randn(p.shape, generator=gen) * 1e-3).bfloat16()
             for name, p in model.named_parameters() if p.requires_grad and _per_layer(name) in with_grads}
    optimizer = trainer.optimizer
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{args.arch}, stage {args.stage}, {args.precision}: {trainable / 1e6:.1f} M trainable parameters, "
          f"{sum(g.numel() for g in grads.values()) / 1e6:.1f} M with a gradient; {optimizer.__class__.__name__}, "
          f"{torch.get_num_threads()} threads")

    kept = {}  # the float32 gradients of the torch path, kept across the kernel's steps as a steady run keeps them

    def update(kernels):
        switches.set_cpu_fused_impl("fused" if kernels else "torch")
        for p, g in grads.items():
            p.grad = g  # read only by the update
        for p32, g32 in kept.items():
            p32.grad = g32
        optimizer._needs_sync = True  # what the wrapper's backward() marks
        start = time.perf_counter()
        optimizer.multiply_grads(1.0 / 8)
        optimizer.clip_grad_norm(1.0)
        optimizer.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - start
        if not kernels and args.precision == "bf16":
            kept.update((p32, p32.grad) for p32 in optimizer.fp32_params)
        return elapsed

    times = {False: [], True: []}
    for i in range(args.warmup + args.steps):
        for kernels in ((False, True) if i % 2 == 0 else (True, False)):
            elapsed = update(kernels)
            if i >= args.warmup:
                times[kernels].append(elapsed)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"torch's passes {off * 1e3:.0f} ms, one-pass kernel {on * 1e3:.0f} ms (medians of {args.steps}); "
          f"paired ratio median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")
    if args.precision == "bf16":
        print(f"float32 gradients the one-pass update does without: {trainable * 4 / 2 ** 20:.0f} MiB")


if __name__ == "__main__":
    main()
