"""Pretraining throughput (samples/s), its share of the machine's GEMM rate, and peak memory.

One training step is exactly what ``fairseq-train`` runs per batch: fairseq's ``Trainer.train_step``
on a trainer built from fairseq-train's flags -- the pretraining criterion's forward (unimodal,
teacher and masked-student passes), backward, gradient clipping and fairseq's Adam, through
fairseq's bf16 optimizer wrappers for ``--precision bf16`` (``--bf16``) and
``bf16-memory-efficient`` (``--memory-efficient-bf16``).  Batches come from the real datasets
(procedural images/clips written to a temporary directory, official preprocessing and masking)
and are collated once before the timed steps, so the numbers are the model's, not the data
loader's; the data loader's own rate is reported separately.  Each configuration runs in a fresh
process so its peak RSS (``ru_maxrss``) is its own.

Per row: FLOPs per step (``torch.utils.flop_counter``: matrix multiplies, convolutions, attention),
the achieved GFLOP/s as a share of a 2048-cubed ``torch.mm`` in the step's precision timed in the
same process, and the profiler's split of one step into matrix multiplies, everything else, and
clipping + the optimizer (``bench/rates.py``).

    python bench/pretrain.py                                # tiny + base, stage 1 + stage 2, fp32 + bf16, CPU
    python bench/pretrain.py --arch base --stage 1 --precision fp32 bf16 amp --steps 3
    python bench/pretrain.py --device cuda                  # same on a GPU (peak = max_memory_allocated)

Prints a markdown table with the machine, torch version and date.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

# Official shapes: 256 px images (257 tokens); stage-2 clips capped by max_duration.
DEFAULTS = {
    "tiny": dict(image_size=64, batch_size=32, audio_seconds=2.0, audio_batch_size=16),
    "base": dict(image_size=256, batch_size=8, audio_seconds=5.0, audio_batch_size=4),
}


def bpe_dir():
    from one_peace.data_utils.bpe import resolve_bpe_dir

    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "assets", "bpe")
    return resolve_bpe_dir(os.environ.get("ONE_PEACE_BPE_DIR") or (shared if os.path.isdir(shared) else None))


USER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "user_src")
# --precision -> fairseq-train's flags (amp: fp32 weights, the step under torch.autocast in bf16;
# fairseq 0.12's --amp is CUDA-only); fp16 (--fp16, fairseq's dynamic loss scaling) on a GPU only.
PRECISION_FLAGS = {"fp32": [], "bf16": ["--bf16"], "bf16-memory-efficient": ["--memory-efficient-bf16"],
                   "amp": [], "fp16": ["--fp16"]}
GEMM_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # the rest: bfloat16


def write_data(stage, n, image_size, audio_seconds, tmp):
    """The TSV of ``n`` training samples at the shapes measured (stage 1: images; stage 2: full clips)."""
    from one_peace.data_utils import synthetic

    if stage == 1:
        synthetic.write_image_split(tmp, "train", n, seed=0)
        return os.path.join(tmp, "image_text_train.tsv")
    import numpy as np
    import soundfile as sf

    os.makedirs(os.path.join(tmp, "audio"), exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):  # full-length clips: every sample has max_duration seconds
        wave = synthetic.render_audio("rising_chirp", rng)
        wave = np.resize(wave, int(audio_seconds * synthetic.SAMPLE_RATE))
        sf.write(os.path.join(tmp, "audio", f"{i}.wav"), wave, synthetic.SAMPLE_RATE)
        rows.append(f"{i}\taudio/{i}.wav\ta rising chirp\t{audio_seconds}")
    path = os.path.join(tmp, "audio_text_train.tsv")
    with open(path, "w") as f:
        f.write("uniq_id\taudio\ttext\tduration\n" + "\n".join(rows) + "\n")
    return path


def fairseq_trainer(args, data, batch_size, image_size, audio_seconds):
    """fairseq's ``Trainer`` built as ``fairseq-train`` builds it from these flags (the user dir, the
    task's model, the criterion, fairseq's Adam and its fp32/bf16 optimizer wrappers)."""
    import fairseq_cli.train  # noqa: F401 -- imported before the user dir, so its --bf16 shim applies
    from fairseq import options, tasks
    from fairseq.trainer import Trainer
    from omegaconf import open_dict

    task = "image_text_pretrain" if args.stage == 1 else "audio_text_pretrain"
    argv = [data, "--user-dir", USER_DIR, "--task", task, "--arch", f"one_peace_pretrain_{args.arch}",
            "--criterion", f"{task}_loss", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
            "--weight-decay", "0.05", "--lr", "1e-4", "--clip-norm", "1.0", "--batch-size", str(batch_size),
            "--bpe-dir", bpe_dir(), "--seed", "1", "--num-workers", "0", "--data-buffer-size", "0"]
    argv += ["--patch-image-size", str(image_size)] if args.stage == 1 else [
        "--max-duration", str(int(audio_seconds + 0.999))]
    argv += (["--cpu"] if args.device == "cpu" else []) + PRECISION_FLAGS[args.precision]
    saved_argv, sys.argv = sys.argv, ["fairseq-train"] + argv  # the command line the --bf16 shim reads
    try:
        parsed = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
        cfg = fairseq_cli.train.convert_namespace_to_omegaconf(parsed)
    finally:
        sys.argv = saved_argv
    if args.stage == 2:  # the official stage-2 model: no image branch, most of the encoder frozen
        with open_dict(cfg.model):
            cfg.model.stage2_pretrain = True
            cfg.model.encoder.use_image_moe = cfg.model.decoder.use_image_moe = False
    fs_task = tasks.setup_task(cfg.task)
    model = fs_task.build_model(cfg.model)  # first, as fairseq-train: the audio dataset reads its front end
    fs_task.load_dataset("train")
    trainer = Trainer(cfg, fs_task, model, fs_task.build_criterion(cfg.criterion))
    dataset = fs_task.dataset("train")
    start = time.perf_counter()
    sample = dataset.collater([dataset[i] for i in range(batch_size)])
    return trainer, model, sample, batch_size / (time.perf_counter() - start)


def measure(args):
    """Runs one configuration in this process; prints one JSON line."""
    import rates

    device = torch.device(args.device)
    d = DEFAULTS[args.arch]
    image_size = args.image_size or d["image_size"]
    batch_size = args.batch_size or (d["batch_size"] if args.stage == 1 else d["audio_batch_size"])
    audio_seconds = args.audio_seconds or d["audio_seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(args.stage, batch_size, image_size, audio_seconds, tmp)
        trainer, model, sample, load_rate = fairseq_trainer(args, data, batch_size, image_size, audio_seconds)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        if args.precision == "amp":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return trainer.train_step([sample])
        return trainer.train_step([sample])

    for _ in range(args.warmup):
        step()
    rates.synchronize(device)
    # The GEMM rate right before and right after the timed steps: on a shared machine the load moves,
    # and a rate from another moment would make the share meaningless.
    gemm_dtype = GEMM_DTYPES.get(args.precision, torch.bfloat16)
    gemm_before = rates.gemm_rate(gemm_dtype, device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        rates.synchronize(device)
        times.append(time.perf_counter() - start)
    gemm_after = rates.gemm_rate(gemm_dtype, device)
    median = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    flops = rates.count_flops(step)
    split = rates.profile_split(step, device, regions=("forward", "backward", "clip-grads", "optimizer"))
    gemm = (gemm_before + gemm_after) / 2
    print(json.dumps(dict(
        arch=args.arch, stage=args.stage, precision=args.precision, batch=batch_size,
        shape=f"{image_size}px" if args.stage == 1 else f"{audio_seconds:g}s audio",
        params_m=params / 1e6, trainable_m=trainable / 1e6, step_s=median, samples_per_s=batch_size / median,
        gflop=flops / 1e9, gflops=flops / 1e9 / median, gemm_gflops=gemm, gemm_gflops_before_after=[
            gemm_before, gemm_after], gemm_share=flops / 1e9 / median / gemm,
        profile=split, load_samples_per_s=load_rate, peak_mib=peak, rss_before_step_mib=rss_before,
        threads=torch.get_num_threads())))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["tiny", "base"], choices=sorted(DEFAULTS))
    parser.add_argument("--stage", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISION_FLAGS),
                        help="fp32; bf16 (fairseq-train --bf16: bf16 model, fp32 master weights); "
                             "bf16-memory-efficient (--memory-efficient-bf16); amp (fp32 weights under autocast); "
                             "fp16 (--fp16, GPU only)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--audio-seconds", type=float, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the rows as JSON lines to this file")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()
    if "fp16" in args.precision and not args.device.startswith("cuda"):
        parser.error("--precision fp16 runs on a GPU only (--device cuda); fairseq has no fp16 on the CPU")
    if args.single:
        args.arch, args.stage, args.precision = args.arch[0], args.stage[0], args.precision[0]
        measure(args)
        return

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"Pretraining step (fairseq Trainer.train_step: criterion forward + backward + clipping + Adam), "
          f"{device}, torch {torch.__version__}, {datetime.date.today()}\n")
    mem = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"| arch | stage | precision | batch | input | params (M) | trainable (M) | step s | samples/s | vs fp32 "
          f"| GFLOP/step | GFLOP/s | GEMM GFLOP/s (same process) | share of GEMM rate | profile: GEMM / other / optimizer "
          f"| {mem} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    failed = []
    for arch in args.arch:
        for stage in args.stage:
            fp32_step = None
            for precision in args.precision:
                cmd = [sys.executable, __file__, "--single", "--arch", arch, "--stage", str(stage), "--precision",
                       precision, "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
                for flag in ("batch_size", "image_size", "audio_seconds"):
                    if getattr(args, flag):
                        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:  # reported, and the other configurations still run
                    failed.append(f"{arch} stage {stage} {precision} failed:\n{out.stderr[-3000:]}")
                    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"| {arch} | {stage} | {precision} | failed: {last[:200]} |", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
                if precision == "fp32":
                    fp32_step = r["step_s"]
                speedup = f"{fp32_step / r['step_s']:.2f}x" if fp32_step else "-"
                p = r["profile"]
                optim = (p["optimizer_s"] + p["clip-grads_s"]) / p["total_s"]
                gemm_part, other = p["gemm_s"] / p["total_s"], p["other_s"] / p["total_s"] - optim
                # one row as soon as it is measured (base runs take minutes on a small CPU)
                print(f"| {r['arch']} | {r['stage']} | {precision} | {r['batch']} | {r['shape']} | {r['params_m']:.1f} "
                      f"| {r['trainable_m']:.1f} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | {speedup} "
                      f"| {r['gflop']:.0f} | {r['gflops']:.0f} | {r['gemm_gflops']:.0f} | {r['gemm_share']:.0%} "
                      f"| {gemm_part:.0%} / {other:.0%} / {optim:.0%} | {r['peak_mib']:.0f} |",
                      flush=True)
    if failed:
        sys.exit("\n\n".join(failed))


if __name__ == "__main__":
    main()
