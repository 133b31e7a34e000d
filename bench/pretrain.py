"""Pretraining throughput (samples/s) and peak memory of the tiny and base architectures.

One training step is exactly what ``fairseq-train`` runs per batch: the pretraining
criterion's forward (unimodal, teacher and masked-student passes), backward, and an Adam
update.  Batches come from the real datasets (procedural images/clips written to a
temporary directory, official preprocessing and masking) and are collated once before the
timed steps, so the numbers are the model's, not the data loader's; the data loader's own
rate is reported separately.  Each configuration runs in a fresh process so its peak RSS
(``ru_maxrss``) is its own.

    python bench/pretrain.py                                # tiny + base, stage 1 + stage 2, CPU
    python bench/pretrain.py --arch base --stage 1 --batch-size 8 --steps 3
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


def build(arch, stage, image_size):
    from one_peace.fairseq_glue.registration import freeze_all_but
    from one_peace.models import OnePeacePretrainConfig, OnePeacePretrainModel
    from one_peace.models.architectures import preset_config

    cfg = preset_config(OnePeacePretrainConfig, arch)
    grid = image_size // 16
    cfg.encoder.image_adapter.bucket_size = cfg.encoder.image_adapter.rel_bucket_size = grid
    cfg.decoder.image_adapter.bucket_size = grid
    if stage == 2:  # the official stage-2 model: no image branch, most of the encoder frozen
        cfg.stage2_pretrain = True
        cfg.encoder.use_image_moe = cfg.decoder.use_image_moe = False
    model = OnePeacePretrainModel(cfg, vocab_size=50264)
    if stage == 2:
        freeze_all_but(model, "audio")
    return model, cfg


def make_batch(stage, n, image_size, audio_seconds, tmp, cfg):
    from one_peace.data_utils import synthetic
    from one_peace.data_utils.audio import parse_feature_encoder_spec
    from one_peace.data_utils.bpe import TextTokenizer
    from one_peace.data_utils.pretrain_datasets import AudioTextPretrainDataset, ImageTextPretrainDataset
    from one_peace.data_utils.tsv import TSVReader

    tokenizer = TextTokenizer(bpe_dir())
    if stage == 1:
        synthetic.write_image_split(tmp, "train", n, seed=0)
        reader = TSVReader(os.path.join(tmp, "image_text_train.tsv"), selected_cols="image_id,image,caption")
        dataset = ImageTextPretrainDataset("train", reader, tokenizer, patch_image_size=image_size)
    else:
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
        reader = TSVReader(path, selected_cols="uniq_id,audio,text,duration")
        spec = parse_feature_encoder_spec(cfg.encoder.audio_adapter.feature_encoder_spec)
        dataset = AudioTextPretrainDataset("train", reader, tokenizer, feature_spec=spec,
                                           max_duration=int(audio_seconds + 0.999))
    start = time.perf_counter()
    batch = dataset.collater([dataset[i] for i in range(n)])
    return batch, n / (time.perf_counter() - start)


def criterion_for(stage):
    from one_peace.criterions.pretrain_loss import (
        AudioTextPretrainLossConfig,
        AudioTextPretrainLossCriterion,
        ImageTextPretrainLossConfig,
        ImageTextPretrainLossCriterion,
    )

    if stage == 1:
        return ImageTextPretrainLossCriterion(ImageTextPretrainLossConfig(), task=None)
    return AudioTextPretrainLossCriterion(AudioTextPretrainLossConfig(), task=None)


def move(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    return obj


def measure(args):
    """Runs one configuration in this process; prints one JSON line."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    d = DEFAULTS[args.arch]
    image_size = args.image_size or d["image_size"]
    batch_size = args.batch_size or (d["batch_size"] if args.stage == 1 else d["audio_batch_size"])
    audio_seconds = args.audio_seconds or d["audio_seconds"]
    model, cfg = build(args.arch, args.stage, image_size)
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05)
    criterion = criterion_for(args.stage)
    with tempfile.TemporaryDirectory() as tmp:
        batch, load_rate = make_batch(args.stage, batch_size, image_size, audio_seconds, tmp, cfg)
    batch = move(batch, device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _, log = criterion(model, batch)
        loss.backward()
        optimizer.step()
        return log

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(dict(
        arch=args.arch, stage=args.stage, batch=batch_size,
        shape=f"{image_size}px" if args.stage == 1 else f"{audio_seconds:g}s audio",
        params_m=params / 1e6, trainable_m=sum(p.numel() for p in trainable) / 1e6,
        step_s=median, samples_per_s=batch_size / median, load_samples_per_s=load_rate,
        peak_mib=peak, rss_before_step_mib=rss_before, threads=torch.get_num_threads())))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["tiny", "base"], choices=sorted(DEFAULTS))
    parser.add_argument("--stage", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--audio-seconds", type=float, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()
    if args.single:
        args.arch, args.stage = args.arch[0], args.stage[0]
        measure(args)
        return

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"Pretraining step (criterion forward + backward + AdamW), {device}, torch {torch.__version__}, "
          f"{datetime.date.today()}\n")
    mem = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"| arch | stage | batch | input | params (M) | trainable (M) | threads | step s | samples/s | {mem} "
          f"| data loading samples/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for arch in args.arch:
        for stage in args.stage:
            cmd = [sys.executable, __file__, "--single", "--arch", arch, "--stage", str(stage),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
            for flag in ("batch_size", "image_size", "audio_seconds"):
                if getattr(args, flag):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{arch} stage {stage} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            # one row as soon as it is measured (base runs take minutes on a small CPU)
            print(f"| {r['arch']} | {r['stage']} | {r['batch']} | {r['shape']} | {r['params_m']:.1f} | "
                  f"{r['trainable_m']:.1f} | {r['threads']} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
                  f"{r['peak_mib']:.0f} | {r['load_samples_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
