"""The FSDP2 part of ``bench/memory_plan.py`` (``--fsdp2-plan``): what fits per GPU count and GPU size.

Measured: per-rank bytes per parameter of the sharded parameters, gradients and Adam state (tiny model,
two gloo processes, ``models/fsdp2.py`` as ``--ddp-backend fully_sharded --bf16`` shards it) and the
activation bytes per token of one fusion layer at the real width (``memory_plan.activation_row``).
Computed: parameter counts on the meta device, the units FSDP2 gathers whole, tokens per sample.
"""
import os
import tempfile

import torch
import torch.multiprocessing as mp

GIB = 1024 ** 3
LAYERS_4B, WIDTH_4B = 40, 1536
GPUS, GPU_GIB = (1, 8, 64), (40, 80)
OVERHEAD_GIB = 3.0  # CUDA context and allocator slack


def _worker(rank, port, out):
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.architectures import PRESETS, apply_preset
    from one_peace.models.config import OnePeacePretrainConfig
    from one_peace.models.fsdp2 import device_mesh, shard_model, training_state_bytes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = OmegaConf.structured(OnePeacePretrainConfig)
        apply_preset(cfg, PRESETS["tiny"], OnePeacePretrainConfig())
        torch.manual_seed(0)
        model = shard_model(OnePeacePretrainModel(cfg, vocab_size=64), device_mesh("cpu"),
                            param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(4, 64, (2, 6), generator=torch.Generator().manual_seed(1))
        emb, _ = model(src_tokens=tokens, encoder_type="text")
        emb.float().square().sum().backward()
        for p in model.parameters():  # the unused branches: zero gradients, as in training
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        n = sum(p.numel() for p in model.parameters())
        if rank == 0:
            torch.save({k: v / n for k, v in training_state_bytes(model, optimizer).items()},
                       os.path.join(out, "bytes.pt"))
    finally:
        dist.destroy_process_group()


def measured_bytes_per_param(port=29819):
    """Per-rank bytes per parameter of (params, grads, Adam state) over 2 ranks."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(port, out), nprocs=2, start_method="spawn")
        return torch.load(os.path.join(out, "bytes.pt"), weights_only=True)


def pretrain_model(modalities, trained):
    """The 4B pretraining model with ``modalities`` on the meta device, all but ``trained`` frozen."""
    from omegaconf import OmegaConf

    from one_peace.fairseq_glue.registration import freeze_all_but
    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.architectures import PRESETS, apply_preset
    from one_peace.models.config import OnePeacePretrainConfig

    cfg = OmegaConf.structured(OnePeacePretrainConfig)
    apply_preset(cfg, PRESETS["4b"], OnePeacePretrainConfig())
    for part in (cfg.encoder, cfg.decoder):
        for m in ("image", "audio", "video"):
            part[f"use_{m}_moe"] = m in modalities
    with torch.device("meta"):
        model = OnePeacePretrainModel(cfg, vocab_size=50265)
    if trained:
        freeze_all_but(model, *trained)
    return model


def unit_sizes(model):
    """(all params, trainable, largest fusion layer, root unit): FSDP2's units (``models/fsdp2.py``)."""
    from one_peace.models.fsdp2 import fusion_layers

    total = sum(p.numel() for p in model.parameters())
    layers = [sum(p.numel() for p in layer.parameters()) for layer in fusion_layers(model)]
    return (total, sum(p.numel() for p in model.parameters() if p.requires_grad), max(layers), total - sum(layers))


def pretrain_tokens(kind):
    """Tokens per sample through the encoder with gradients: the criterion's views (mask ratios: task defaults)."""
    from one_peace.tasks.pretrain_tasks.pretrain_task import AudioTextPretrainConfig, ImageTextPretrainConfig
    from one_peace.tasks.pretrain_tasks.video_text_pretrain import VideoTextPretrainConfig

    if kind == "stage1":
        c = ImageTextPretrainConfig()
        t, g = c.max_src_length + 2, (c.patch_image_size // 16) ** 2
        return (t + 1 + g + t * (1 - c.text_mask_ratio) + 1 + g * (1 - c.image_mask_ratio)
                + t * (1 - c.vl_text_mask_ratio) + 1 + g * (1 - c.vl_image_mask_ratio))
    if kind == "stage2":  # the text views run under no_grad (frozen)
        c = AudioTextPretrainConfig()
        t, a = c.max_src_length + 2, 16000 * c.max_duration // 320
        return a + a * (1 - c.audio_mask_ratio) + t * (1 - c.al_text_mask_ratio) + a * (1 - c.al_audio_mask_ratio)
    c = VideoTextPretrainConfig()
    t, v = c.max_src_length + 2, c.num_frames * (c.patch_image_size // 16) ** 2
    return 1 + v + 1 + v * (1 - c.video_mask_ratio) + t * (1 - c.vt_text_mask_ratio) + 1 + v * (1 - c.vt_video_mask_ratio)


def per_gpu_state(sizes, per_param, gpus):
    """Bytes per GPU: shards of params (all), grads and Adam state (trainable), and the whole units in use."""
    total, trainable, layer, root = sizes
    share = 2.0 / gpus  # measured over 2 ranks: each holds 1/2 (dim-0 shards), so 1/N over N
    sharded = share * (total * per_param["params"] + trainable * (per_param["grads"] + per_param["optimizer"]))
    if gpus == 1:
        return sharded  # FSDP2 over one rank gathers nothing
    # bf16 copies: the root unit for the whole step (the root is not resharded), this layer and the next
    # (prefetch); fp32 gradients of the root and one layer before their reduce-scatter
    return sharded + 2 * (root + 2 * layer) + 4 * (root + layer)


def report(load_benchmark, activation_row, benchmarks):
    per_param = measured_bytes_per_param()
    print("FSDP2 per-rank bytes per parameter, measured over 2 ranks (bf16 compute, fp32 shards): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_param.items()) + f"; total {sum(per_param.values()):.2f} "
          f"(= {2 * sum(per_param.values()):.2f} B/param unsharded, /N over N GPUs)\n")

    # Per-token activation bytes, measured on the benchmark nearest each model: outside the layers they are
    # mostly the front end's (image patches, or the audio conv stack), inside one layer the same for all.
    rates = {}
    for bench in ("coco/flickr30k", "avqa"):
        row = activation_row(benchmarks[bench])
        rates[bench] = (row["base"] / row["tokens"], row["per_layer"] / row["tokens"])
        print(f"Activations measured on {bench} ({row['tokens']} tokens): {rates[bench][1] / 1024:.1f} KiB per "
              f"token per layer, {rates[bench][0] / 1024:.1f} KiB per token outside the layers")
    print()

    task, model_cfg, y = load_benchmark(benchmarks["avqa"])
    with torch.device("meta"):
        finetune = task.build_model(model_cfg)
    plans = [("4B fine-tuning (AVQA, largest benchmark model)", unit_sizes(finetune), row["tokens"], "avqa")]
    del finetune
    for name, modalities, trained, kind, near in (
            ("4B pretraining, stage 1 (text + image)", ("image",), (), "stage1", "coco/flickr30k"),
            ("4B pretraining, stage 2 (+ audio, rest frozen)", ("audio",), ("audio",), "stage2", "avqa"),
            ("4B + video pretraining (4 branches, all but video frozen)", ("image", "audio", "video"), ("video",),
             "video", "coco/flickr30k")):
        plans.append((name, unit_sizes(pretrain_model(modalities, trained)), pretrain_tokens(kind), near))

    header = " | ".join(f"{g} GPU{'s' if g > 1 else ''}" for g in GPUS)
    print(f"| model | params (trainable) | tokens/sample | activations/sample, checkpointed (GiB) | "
          f"state per GPU (GiB): {header} |\n|---|---|---|---|" + "---|" * len(GPUS))
    fits = []
    for name, sizes, tokens, near in plans:
        per_token_base, per_token_layer = rates[near]
        # checkpointed: every layer keeps its bf16 input; one layer's activations live again in its backward
        act = tokens * (per_token_base + LAYERS_4B * WIDTH_4B * 2 + per_token_layer) / GIB
        states = [per_gpu_state(sizes, per_param, g) / GIB for g in GPUS]
        print(f"| {name} | {sizes[0] / 1e9:.2f} B ({sizes[1] / 1e9:.2f} B) | {tokens:.0f} | {act:.2f} | "
              + " | ".join(f"{s:.1f}" for s in states) + " |")
        fits.append((name, states, act))

    print(f"\nLargest per-GPU batch with checkpoint_activations ({OVERHEAD_GIB:.0f} GiB left for the CUDA context; "
          "0 = the state alone does not fit):\n")
    cols = [f"{g} x {m} GB" for g in GPUS for m in GPU_GIB]
    print("| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, states, act in fits:
        cells = []
        for state in states:
            for memory in GPU_GIB:
                free = memory * 1e9 / GIB - OVERHEAD_GIB - state
                cells.append(str(max(0, int(free // act))))
        print(f"| {name} | " + " | ".join(cells) + " |")
