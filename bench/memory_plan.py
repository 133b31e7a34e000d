"""Memory plan for fine-tuning the released 4B model: weights/gradients/optimizer state and activations.

Three measurements, printed as the markdown tables of docs/SCALING.md:

1. **Parameters** of every benchmark's model (its yaml in run_scripts/, the 4B preset), built by the
   benchmark's own task on the meta device (no memory allocated).
2. **Bytes per parameter** of weights + gradients + optimizer state, measured after one real update
   of fairseq's ``Trainer`` with ``adjust_adam`` on a tiny model in fp32, bf16 (fairseq's
   FP16Optimizer: fp32 master copy) and memory-efficient bf16; and the optimizer state each worker
   keeps with ``use_distributed_fused_adam`` (torch ZeroRedundancyOptimizer) measured in two gloo
   processes.  Per-parameter ratios do not depend on the model size; 8-GPU sharding is the measured
   per-worker share scaled from 2 workers to 8 (the state is split by parameters, evenly at 4B).
3. **Activations**: bytes of the tensors autograd saves for backward in one training forward of
   the benchmark's model at the real width (1536, 24 heads), real input sizes and batch 1, in bf16
   on CPU (SDPA attention), with 1 and 2 fusion layers; the per-layer difference is extrapolated to
   40 layers and the result multiplied by the yaml's per-GPU batch size.  With
   ``checkpoint_activations`` a layer keeps only its input (B x N x 1536) and one layer's
   activations are live again while it is recomputed in backward (computed from the same figures).

4. ``--fsdp2-plan`` (alone, a few minutes): the FSDP2 plan (``--ddp-backend fully_sharded``).  Per-rank
   bytes of parameters, gradients and Adam state *measured* on the tiny model sharded over two gloo
   processes (bf16 compute on fp32 shards, as ``common.bf16`` trains) and scaled to N ranks (dim-0 shards:
   the share is 1/N); the whole bf16 units FSDP2 gathers (the root unit for the step, two fusion layers)
   and one layer's fp32 gradients before the reduce-scatter are *computed* from the models' parameters.
   Activations with ``checkpoint_activations``: the per-token bytes of one layer and of the rest *measured*
   at the real width on coco/flickr30k (image models) and AVQA (audio models), as 3., times the tokens each sample sends through the encoder
   with gradients (the criterion's views, from the tasks' mask ratios).  Models: the largest fine-tuning
   model (AVQA's yaml), pretraining stage 1 (text + image), stage 2 (+ audio; all but audio frozen) and
   video pretraining (all four branches; all but video frozen), built on the meta device.

    ONE_PEACE_BPE_DIR=../shared/assets/bpe python bench/memory_plan.py [--only vqa,esc50]
    ONE_PEACE_BPE_DIR=../shared/assets/bpe python bench/memory_plan.py --fsdp2-plan
"""
import argparse
import datetime
import os
import platform
import sys
import tempfile

import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GIB = 1024 ** 3
LAYERS_4B = 40
BENCHMARKS = {  # name: yaml under run_scripts/
    "esc50": "esc50/finetune_esc50.yaml", "fsd50k": "fsd50k/finetune_fsd50k.yaml",
    "vggsound": "vggsound/finetune_vggsound.yaml", "vggsound_av": "vggsound/finetune_vggsound_av.yaml",
    "audiocaps/clotho": "audio_text_retrieval/finetune_audio_text_retrieval.yaml", "avqa": "aqa/finetune_aqa.yaml",
    "coco/flickr30k": "image_text_retrieval/finetune_image_text_retrieval.yaml",
    "refcoco": "refcoco/finetune_refcoco.yaml", "vqav2": "vqa/finetune_vqa.yaml", "nlvr2": "nlvr2/finetune_nlvr2.yaml",
    "imagenet": "image_classify/finetune_imagenet.yaml", "ade20k": "segmentation/finetune_ade20k.yaml",
}


# ---- building a benchmark's model through its task ----------------------------------------------------
def load_benchmark(yaml_path, layers=None):
    """(task, model cfg, yaml) of a benchmark yaml; ``layers`` overrides the encoder depth."""
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
    from omegaconf import OmegaConf

    import one_peace.user_src.registry  # noqa: F401  (registers tasks and models)

    y = OmegaConf.load(os.path.join(REPO, "run_scripts", yaml_path))
    task_cfg = OmegaConf.merge(OmegaConf.structured(TASK_DATACLASS_REGISTRY[y.task._name]), y.task)
    task_cfg.data = task_cfg.valid_data = "unused.tsv"
    task = TASK_REGISTRY[y.task._name].setup_task(task_cfg)
    model_cfg = OmegaConf.merge(OmegaConf.structured(ARCH_MODEL_REGISTRY[y.model._name].__dataclass), y.model)
    if layers is not None:
        model_cfg.encoder.layers = layers
        if "seg_layers" in model_cfg:  # the four feature maps all from the last layer
            model_cfg.seg_layers = ",".join([str(layers - 1)] * 4)
    return task, model_cfg, y


def count_parameters(yaml_path):
    task, model_cfg, _ = load_benchmark(yaml_path)
    with torch.device("meta"):
        model = task.build_model(model_cfg)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- activations ------------------------------------------------------------------------------------
def net_inputs(task, y, batch=1, dtype=torch.bfloat16):
    """The largest training input of the benchmark: full-length text, full-size images, longest audio."""
    cfg = task.cfg
    head = str(getattr(cfg, "head_type", "image"))
    tokens = torch.randint(4, 1000, (batch, int(getattr(cfg, "max_src_length", 70)) + 2))
    size = int(cfg.patch_image_size)
    image = torch.randn(batch, 3, size, size, dtype=dtype)
    samples = int(16000 * float(getattr(cfg, "max_duration", 15)))
    audio = {"src_audios": torch.randn(batch, samples, dtype=dtype)}  # no padding: the mask is built
    if y.task._name in ("image_text_retrieval", "audio_text_retrieval"):  # two towers, called in turn
        query = {"src_images": image} if head == "vl" else audio
        return [dict(encoder_type="image" if head == "vl" else "audio", **query),
                dict(encoder_type="text", src_tokens=tokens)]
    if y.task._name == "semantic_segmentation":
        return [dict(src_images=image)]
    net = {}
    if "l" in head or head == "text":
        net["src_tokens"] = tokens
    if head in ("image", "vl", "av"):
        net["src_images"] = image
        if getattr(cfg, "use_two_images", False):
            net["src_images_2"] = image.clone()
    if head in ("audio", "al", "av"):
        net.update(audio)
    return [net]


def saved_activation_bytes(model, inputs):
    """Bytes of the distinct storages autograd saves in one training forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.nbytes():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = [model(**net) for net in inputs]
    del outputs
    return sum(seen.values())


def activation_row(yaml_path):
    """(bytes at batch 1 without checkpointing for 40 layers, per-layer bytes, layer-input bytes, tokens)."""
    measured = {}
    for layers in (1, 2):
        task, model_cfg, y = load_benchmark(yaml_path, layers)
        torch.manual_seed(0)
        model = task.build_model(model_cfg).to(torch.bfloat16).train()
        model.requires_grad_(True)
        inputs = net_inputs(task, y)
        measured[layers] = saved_activation_bytes(model, inputs)
        del model
    per_layer = measured[2] - measured[1]
    base = measured[1] - per_layer
    tokens = layer_tokens(task, y)
    layer_input = tokens * 1536 * 2  # bf16 hidden states entering each layer, summed over the forward calls
    return dict(base=base, per_layer=per_layer, layer_input=layer_input, tokens=tokens,
                batch=int(y.dataset.batch_size), yaml=y)


def layer_tokens(task, y):
    """Tokens through the fusion layers in one sample's forward (all calls summed)."""
    cfg = task.cfg
    head = str(getattr(cfg, "head_type", "image"))
    text = int(getattr(cfg, "max_src_length", 70)) + 2
    image = (int(cfg.patch_image_size) // 16) ** 2 + 1
    audio = int(16000 * float(getattr(cfg, "max_duration", 15))) // 320  # 50 frames/s after the CNN, + CLS
    if y.task._name == "image_text_retrieval":
        return image + text
    if y.task._name == "audio_text_retrieval":
        return audio + text
    if y.task._name == "semantic_segmentation":
        return image - 1 + 1
    n = {"image": image, "audio": audio, "text": text}.get(head)
    if n is None:
        n = (text if "l" in head else 0) + (image if head in ("vl", "av") else 0) + (audio if "a" in head else 0)
        if getattr(cfg, "use_two_images", False):
            n *= 2
    return n


# ---- bytes per parameter of weights, gradients and optimizer state ------------------------------------
def tensor_bytes(tensors):
    storages = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def state_tensors(optimizer):
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def training_state_bytes(precision):
    """(weights + grads, fp32 master copy + its grads, Adam state) in bytes per parameter after one update,
    through fairseq's wrappers as a GPU runs them.  On a CPU the one-pass bf16 Adam kernel keeps no float32
    gradients (``optim/master_weights.py``, direct mode: 4 bytes per parameter less in plain bf16); the plan is
    for GPUs, so the measurement runs with the CPU kernels off."""
    from one_peace.models.kernels import switches

    switches.set_cpu_fused_impl("torch")
    try:
        return _measured_state_bytes(precision)
    finally:
        switches.set_cpu_fused_impl(None)


def _measured_state_bytes(precision):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    task, _, _ = load_benchmark(BENCHMARKS["esc50"])
    argv = ["unused.tsv", "--task", "audio_classify", "--criterion", "classify_criterion", "--arch",
            "one_peace_classify_tiny", "--cpu", "--optimizer",
            "adjust_adam", "--lr", "1e-4", "--weight-decay", "0.05", "--layer-decay", "0.9", "--no-bias-decay"]
    argv += {"fp32": [], "bf16": ["--bf16", "--fp16-no-flatten-grads"],
             "memory-efficient bf16": ["--bf16", "--memory-efficient-bf16"]}[precision]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    cfg.common.tpu = cfg.optimizer.tpu = False  # fairseq's argparse path turns --bf16 into TPU mode
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    params = list(trainer.model.parameters())
    n = sum(p.numel() for p in params)
    loss = sum((p.float() * torch.randn(p.shape)).sum() for p in params) * 1e-3
    trainer.optimizer.backward(loss)  # through the wrapper: it syncs grads to its fp32 copy on step
    trainer.optimizer.step()
    wrapper = trainer.optimizer  # AdjustAdam, or fairseq's FP16Optimizer / MemoryEfficientFP16Optimizer
    masters = getattr(wrapper, "fp32_params", None) or []
    masters = list(masters.values()) if isinstance(masters, dict) else list(masters)
    inner = getattr(wrapper, "fp32_optimizer", None) or getattr(wrapper, "wrapped_optimizer", None) or wrapper
    weights = tensor_bytes(params + [p.grad for p in params])
    master = tensor_bytes(masters + [m.grad for m in masters])
    return weights / n, master / n, tensor_bytes(state_tensors(inner.optimizer)) / n


def _sharded_worker(rank, world, port, out):
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from one_peace.optim.adjust_adam import AdjustAdam, AdjustAdamConfig

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
    cfg = OmegaConf.structured(AdjustAdamConfig(lr=[1e-4], layer_decay=1.0, no_bias_decay=False, tpu=False,
                                                use_distributed_fused_adam=True))
    opt = AdjustAdam(cfg, list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    local = opt._optimizer.optim if hasattr(opt._optimizer, "optim") else opt._optimizer
    torch.save(tensor_bytes(state_tensors(local)) / n, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def sharded_state_fraction(world=2, port=29817):
    """Largest per-worker share of the Adam state with use_distributed_fused_adam over ``world`` workers."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_sharded_worker, args=(world, port, out), nprocs=world, start_method="spawn")
        shares = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]
    return max(shares) / 8.0  # 8 bytes per parameter unsharded (two fp32 moments)


# ---- report -------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--fsdp2-plan", action="store_true",
                        help="only the FSDP2 plan (--ddp-backend fully_sharded): 1, 8, 64 GPUs of 40 and 80 GB")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"{datetime.date.today()}; command: python bench/memory_plan.py {' '.join(argv or sys.argv[1:])}\n")
    if args.fsdp2_plan:
        from fsdp2_plan import report

        return report(load_benchmark, activation_row, BENCHMARKS)

    per_param = {p: training_state_bytes(p) for p in ("fp32", "bf16", "memory-efficient bf16")}
    share2 = sharded_state_fraction(2)
    share = share2 * 2 / args.gpus
    print("| precision | weights + grads (B/param) | fp32 master + grads | Adam state | total | "
          f"total, state sharded over {args.gpus} |\n|---|---|---|---|---|---|")
    for p, (w, m, s) in per_param.items():
        print(f"| {p} | {w:.2f} | {m:.2f} | {s:.2f} | {w + m + s:.2f} | {w + m + s * share:.2f} |")
    print(f"\nMeasured per-worker share of the Adam state over 2 workers: {share2:.3f} (scaled to {args.gpus}: "
          f"{share:.3f})\n")

    print(f"| benchmark | params | batch/GPU | tokens/sample | states fp32 / bf16 / ME-bf16 (GiB) | "
          f"same, sharded over {args.gpus} | activations (GiB) | with checkpoint_activations | yaml sets it |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        total, trainable = count_parameters(BENCHMARKS[name])
        row = activation_row(BENCHMARKS[name])
        states = [trainable * (w + m + s) / GIB for w, m, s in per_param.values()]
        sharded = [trainable * (w + m + s * share) / GIB for w, m, s in per_param.values()]
        b = row["batch"]
        full = b * (row["base"] + LAYERS_4B * row["per_layer"]) / GIB
        ckpt = b * (row["base"] + LAYERS_4B * row["layer_input"] + row["per_layer"]) / GIB
        sets = bool(row["yaml"].model.get("encoder", {}).get("checkpoint_activations", False))
        print(f"| {name} | {total / 1e9:.2f} B | {b} | {row['tokens']} | "
              f"{' / '.join(f'{v:.1f}' for v in states)} | {' / '.join(f'{v:.1f}' for v in sharded)} | "
              f"{full:.1f} | {ckpt:.1f} | {'yes' if sets else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
