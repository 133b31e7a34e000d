"""Steady training steps: the median of many, with the page faults and kernel time they cost.

``bench/pretrain.py`` reports a row per configuration with FLOPs, GEMM shares and a profile; this script
only times ``Trainer.train_step`` on the same trainer (fairseq-train's flags, the real datasets), after
warm-up steps that let the heap settle, and reads ``getrusage`` around the timed steps: minor page faults,
system (kernel) and user CPU seconds per step, and peak RSS.  On a machine whose speed drifts, compare
medians of processes run alternately.

``--alternate-packing`` times, in one process, steps alternated between the criteria's views run packed
(``FusionEncoder.forward_passes``, models/packed_passes.py) and one pass per view, and reports the paired ratios.

``--alternate-grad-factors`` (``--bf16`` / ``--memory-efficient-bf16``) times, in one process, steps
alternated between fairseq's unscaling pass over the float32 gradients and the wrapper's factor divided out
inside the fused Adam step (``supports_step_with_scale``, optim/fused_adam.py), and reports the paired ratios.

    python bench/train_steps.py --arch base --stage 1 --precision bf16 --steps 6
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647 \\
        python bench/train_steps.py --arch base --stage 1 --precision bf16 --steps 6   # the previous allocator setting
    python bench/train_steps.py --arch base --stage 1 --precision bf16 --steps 6 --alternate-grad-factors
    python bench/train_steps.py --arch base --stage 1 --precision bf16 --steps 6 --alternate-packing
    python bench/train_steps.py --arch tiny --stage 1 --precision bf16 --steps 40 --alternate-precision
    python bench/train_steps.py --arch base --stage 1 --precision fp32 --steps 6 --alternate-cpu-fused

``--alternate-cpu-fused`` times, in one process, steps alternated between the elementwise chains through torch's
ops and the fused CPU kernels (``ONE_PEACE_CPU_FUSED``, models/kernels/cpu_fused.py), and reports the paired ratios.

``--alternate-precision`` builds two trainers in one process, fp32 and ``--precision`` (bf16 or
bf16-memory-efficient), and alternates their steps: the bf16-against-fp32 ratio of issue #28 as a paired
measurement.  ``bench/pretrain.py`` runs each precision in a process of its own, one after the other, so a change
in the machine's speed between them moves its ``vs fp32`` column.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402 -- the trainer as bench/pretrain.py builds it


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(pretrain.DEFAULTS), default="base")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--precision", choices=sorted(pretrain.PRECISION_FLAGS), default="fp32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--alternate-grad-factors", action="store_true")
    parser.add_argument("--alternate-packing", action="store_true")
    parser.add_argument("--alternate-precision", action="store_true")
    parser.add_argument("--alternate-cpu-fused", action="store_true")
    args = parser.parse_args()
    if args.alternate_grad_factors + args.alternate_packing + args.alternate_precision + args.alternate_cpu_fused > 1:
        parser.error("--alternate-grad-factors, --alternate-packing, --alternate-precision, --alternate-cpu-fused: "
                     "one comparison per run")
    if args.alternate_precision and args.precision == "fp32":
        parser.error("--alternate-precision: fp32 against --precision bf16 or bf16-memory-efficient")
    if args.precision == "amp":
        parser.error("--precision amp: use bench/pretrain.py (the step under autocast)")
    if args.alternate_grad_factors and args.precision == "fp32":
        parser.error("--alternate-grad-factors: fp32 training has no deferred factor "
                     "(use bf16 or bf16-memory-efficient)")
    args.device = "cpu"
    d = pretrain.DEFAULTS[args.arch]
    batch = d["batch_size"] if args.stage == 1 else d["audio_batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        data = pretrain.write_data(args.stage, batch, d["image_size"], d["audio_seconds"], tmp)
        trainer, _, sample, _ = pretrain.fairseq_trainer(args, data, batch, d["image_size"], d["audio_seconds"])
        if args.alternate_precision:
            fp32 = pretrain.fairseq_trainer(argparse.Namespace(**{**vars(args), "precision": "fp32"}), data, batch,
                                            d["image_size"], d["audio_seconds"])
    name = f"{args.arch}, stage {args.stage}, {args.precision}"
    if args.alternate_precision:
        trainers = {False: (fp32[0], fp32[2]), True: (trainer, sample)}
        paired(args, f"{args.arch}, stage {args.stage}", lambda on: trainers[on][0].train_step([trainers[on][1]]),
               ("fp32", args.precision))
        return
    if args.alternate_grad_factors:
        from fairseq.optim import adam

        def grad_factors_in_step(on):
            adam.Adam.supports_step_with_scale = on

        alternate(trainer, sample, args, name, grad_factors_in_step, ("fairseq's passes", "factors in the step"))
        return
    if args.alternate_packing:
        from one_peace.models.fusion_encoder import FusionEncoder

        packs = FusionEncoder.packs_passes

        def packing(on):
            FusionEncoder.packs_passes = packs if on else (lambda self: False)

        alternate(trainer, sample, args, name, packing, ("one pass per view", "views packed"))
        return
    if args.alternate_cpu_fused:
        from one_peace.models.kernels import switches

        def cpu_fused(on):
            switches.set_cpu_fused_impl("fused" if on else "torch")

        alternate(trainer, sample, args, name, cpu_fused, ("torch's chains", "fused CPU kernels"))
        return
    for _ in range(args.warmup):
        trainer.train_step([sample])
    times, before = [], resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step([sample])
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = args.steps
    print(f"{name}: median {statistics.median(times):.3f} s (min {min(times):.3f}) over {n} steps; per step "
          f"{(after.ru_minflt - before.ru_minflt) // n} minor faults, {(after.ru_stime - before.ru_stime) / n:.3f} "
          f"kernel s, {(after.ru_utime - before.ru_utime) / n:.3f} user s; peak RSS {after.ru_maxrss // 1024} MiB")


def alternate(trainer, sample, args, name, switch, labels):
    """Steps alternated between ``switch(False)`` and ``switch(True)`` (the order swapped every other pair);
    prints both medians and the paired ratios (off / on)."""
    def step(on):
        switch(on)
        trainer.train_step([sample])

    paired(args, name, step, labels)


def paired(args, name, step, labels):
    """``step(False)`` and ``step(True)`` alternated (the order swapped every other pair); prints both medians and
    the paired ratios (False / True)."""
    times = {False: [], True: []}
    for i in range(args.warmup + args.steps):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            start = time.perf_counter()
            step(on)
            if i >= args.warmup:
                times[on].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    print(f"{name}: {labels[0]} {statistics.median(times[False]):.3f} s, {labels[1]} "
          f"{statistics.median(times[True]):.3f} s (medians of {args.steps}); paired ratio median "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
