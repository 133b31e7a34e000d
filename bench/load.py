"""Loading a released-size checkpoint: time to a first embedding, peak RSS, and CPU embedding throughput.

A stand-in of ``one-peace.pt`` is generated first (the official file layout: ``model`` with the
retrieval-relevant keys of the tri-modal model, one shared rel-pos table per adapter, derived
buffers omitted, and a saved ``cfg``; random bf16 values, as the released files were written by a
bf16 trainer).  Keys and shapes come from the model built on the meta device, so no float32 copy
of the weights is ever allocated.  Each measurement then runs in a fresh process so its peak RSS
(``VmHWM``, which counts the memory-mapped file pages it touched) is its own.  (Not ``ru_maxrss``:
it survives ``exec`` and would report the parent's size at ``fork``.)

    python bench/load.py                                   # base and 4b, bfloat16 and float32 loads
    python bench/load.py --size base --dtype bfloat16
    python bench/load.py --throughput --size base          # embeddings/s, fp32 vs bf16 (CPU)
    python bench/load.py --throughput --size base 4b --precision fp32 bf16 amp --layers 4b=8
    python bench/load.py --throughput --size base 4b --precision fp32 bf16 --device cuda --images 64 --clips 32

``--throughput`` rows give, per precision (``amp``: fp32 weights under ``torch.autocast`` in bf16),
images/s (256 px) and 5 s clips/s of the hub's ``extract_*_features``, the FLOPs of one batch
(``torch.utils.flop_counter``), the achieved GFLOP/s as a share of a 2048-cubed ``torch.mm`` in that
precision timed in the same process, and the profiler's split of one batch into matrix multiplies and
the rest (``bench/rates.py``).  ``--layers SIZE=N`` builds that size's stand-in with N encoder layers
(every matrix keeps the size's shape; the 4B model's fp32 weights, 16 GB, do not fit beside other jobs).

Prints markdown tables with the machine, torch version and date.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def bpe_dir():
    from one_peace.data_utils.bpe import resolve_bpe_dir

    shared = os.path.join(HERE, "..", "..", "shared", "assets", "bpe")
    return resolve_bpe_dir(os.environ.get("ONE_PEACE_BPE_DIR") or (shared if os.path.isdir(shared) else None))


def stand_in_path(workdir, size, layers=None):
    return os.path.join(workdir, f"one-peace-{size}{f'-{layers}layers' if layers else ''}-standin.pt")


def ensure_stand_in(workdir, size, layers=None):
    """The stand-in of ``size`` under ``workdir``, written first if absent (other benches embed with it)."""
    os.makedirs(workdir, exist_ok=True)
    path = stand_in_path(workdir, size, layers)
    if not os.path.exists(path):
        make_stand_in(path, size, layers=layers)
    return path


def make_stand_in(path, size, vocab_size=50264, seed=0, layers=None):
    """Write a random bf16 checkpoint in the official layout for the ``size`` preset (``layers``: that many
    encoder layers instead of the preset's, every weight of its shape)."""
    from omegaconf import OmegaConf

    from one_peace.models import OnePeaceRetrievalModel
    from one_peace.models.architectures import preset_config
    from one_peace.models.config import OnePeaceRetrievalConfig

    cfg = preset_config(OnePeaceRetrievalConfig, size)
    if layers:
        cfg.encoder.layers = layers
    with torch.device("meta"):
        model = OnePeaceRetrievalModel(cfg, head_type="val", vocab_size=vocab_size)
    buffers = {name for name, _ in model.named_buffers()}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in model.state_dict().items():
        if name in buffers:
            continue  # derived (rel-pos bucket maps, position ids, version): official files omit them
        weights[name] = (torch.randn(tensor.shape, generator=generator, dtype=torch.bfloat16) * 0.02)
    model_cfg = OmegaConf.to_container(OmegaConf.structured(cfg))
    model_cfg["_name"] = "one_peace_retrieval"
    task_cfg = {"_name": "base_task", "bpe_dir": "../../utils/BPE", "head_type": "val", "patch_image_size": 256,
                "max_src_length": 70, "max_duration": 15}
    torch.save({"model": weights, "cfg": {"model": model_cfg, "task": task_cfg}}, path)
    return sum(t.numel() for t in weights.values())


def peak_rss_gib() -> float:
    """This process image's peak resident set (VmHWM), in GiB."""
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return kib / 2 ** 20


def measure_load(path, dtype, device="cpu"):
    """In this process: from_pretrained + one text embedding; returns a result dict."""
    from one_peace import from_pretrained

    start = time.perf_counter()
    hub = from_pretrained(path, model_type="one_peace_retrieval", device=device, dtype=dtype, bpe_dir=bpe_dir())
    loaded = time.perf_counter()
    emb = hub.extract_text_features(hub.process_text(["a dog barks at the mailman"]))
    assert torch.isfinite(emb.float()).all()  # on a GPU this also waits for the embedding
    done = time.perf_counter()
    return {"load_s": loaded - start, "first_embedding_s": done - start,
            "peak_rss_gib": peak_rss_gib(),
            "params": sum(p.numel() for p in hub.model.parameters())}


PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "amp": "float32"}  # --precision -> the hub's dtype


@contextlib.contextmanager
def conv_adapter_paths():
    """The image patch embedding and the audio front end as they ran before issue #28 -- their convolutions
    (``forward_convs``, the official layout) -- instead of their matrix multiplies over windows, channels
    last, so both can be timed in one process."""
    from unittest import mock

    from one_peace.models.adapters.audio import ConvFeatureExtractor
    from one_peace.models.adapters.image import HierarchicalMLP

    with mock.patch.object(HierarchicalMLP, "forward", HierarchicalMLP.forward_convs), \
            mock.patch.object(ConvFeatureExtractor, "forward", ConvFeatureExtractor.forward_convs):
        yield


@contextlib.contextmanager
def torch_chains():
    """The elementwise chains through torch's ops instead of the fused CPU kernels (``ONE_PEACE_CPU_FUSED=torch``,
    models/kernels/cpu_fused.py), so both can be timed in one process."""
    from one_peace.models.kernels import switches

    switches.set_cpu_fused_impl("torch")
    try:
        yield
    finally:
        switches.set_cpu_fused_impl(None)


BASELINES = {"conv_paths": conv_adapter_paths, "torch_chains": torch_chains}


def throughput_inputs(hub, images, clips, seconds_audio):
    """Random 256 px images and ``seconds_audio`` clips as the processors give them (float32)."""
    import numpy as np

    generator = torch.Generator().manual_seed(0)
    samples = int(16000 * seconds_audio)
    frames = hub.model.encoder_wrapper.audio_adapter.num_frames(samples)
    audios = torch.from_numpy(np.random.default_rng(0).standard_normal((clips, samples)).astype("float32"))
    return {"images": dict(src_images=torch.randn(images, 3, 256, 256, generator=generator)),
            "clips": dict(src_audios=audios, audio_padding_masks=torch.zeros(clips, frames + 1, dtype=torch.bool))}


def measure_throughput(path, precision, seconds_audio=5.0, iters=3, images=2, clips=2, baselines=(), device="cpu"):
    """Per modality: items/s of ``extract_*_features``, FLOPs of a batch, GFLOP/s as a share of the GEMM rate
    in the precision, and the profiler's split.  Each timed batch is followed by a short GEMM timing; the
    fastest batch is set against the fastest GEMM timing: on a machine shared with other jobs, bursts of their
    work slow single timings many times over, and the fastest of each is the least disturbed.  ``baselines`` (names in ``BASELINES``):
    each batch is also run that way, alternately -- through the adapters' convolutions (``conv_paths``,
    :func:`conv_adapter_paths`) or the elementwise chains through torch's ops (``torch_chains``).  On a GPU
    each timed batch ends with a synchronisation, and the profile's split is of device time."""
    import rates

    from one_peace import from_pretrained

    torch.manual_seed(0)
    device = torch.device(device)
    hub = from_pretrained(path, model_type="one_peace_retrieval", device=device, dtype=PRECISIONS[precision],
                          bpe_dir=bpe_dir(), modalities=("text", "image", "audio"))
    inputs = throughput_inputs(hub, images, clips, seconds_audio)
    modality = {"images": "image", "clips": "audio"}
    gemm_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    out = {"params": sum(p.numel() for p in hub.model.parameters()),
           "layers": len(hub.model.encoder_wrapper.fusion_model.layers)}
    gemms = []
    for name, net_input in inputs.items():
        count = next(iter(net_input.values())).size(0)

        def run(which=modality[name], net_input=net_input):
            context = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "amp"
                       else contextlib.nullcontext())
            with context:
                out = hub.extract_features(which, **net_input)
            rates.synchronize(device)
            return out

        run()  # warm-up
        flops = rates.count_flops(run)
        times, baseline_times = [], {baseline: [] for baseline in baselines}
        for _ in range(iters):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
            gemms.append(rates.gemm_rate(gemm_dtype, device, seconds=0.25))
            for baseline in baselines:
                with BASELINES[baseline]():
                    start = time.perf_counter()
                    run()
                    baseline_times[baseline].append(time.perf_counter() - start)
        seconds = min(times)
        for baseline, btimes in baseline_times.items():
            out[f"{name}_{baseline}"] = dict(per_s=count / min(btimes), speedup=min(btimes) / seconds)
        split = rates.profile_split(run, device, regions=())
        out[name] = dict(per_s=count / seconds, batch=count, batch_s=seconds, gflop=flops / 1e9,
                         gflops=flops / 1e9 / seconds, gemm_share_of_profile=split["gemm_s"] / split["total_s"])
    out["gemm_gflops"] = max(gemms)
    for name in inputs:
        out[name]["share"] = out[name]["gflops"] / out["gemm_gflops"]
    return out


def run_child(mode, path, options):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--path", path, *options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device="cpu"):
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}, {datetime.date.today()}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def baselines(args):
    return [name for name in BASELINES if getattr(args, name)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", action="extend", nargs="+", choices=["tiny", "base", "4b"])
    parser.add_argument("--dtype", action="append", choices=["bfloat16", "float32"])
    parser.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "one_peace_load"))
    parser.add_argument("--throughput", action="store_true", help="measure embeddings/s instead of loading")
    parser.add_argument("--precision", nargs="+", choices=sorted(PRECISIONS), default=["fp32", "bf16"],
                        help="--throughput: fp32, bf16 weights, amp (fp32 weights under autocast in bf16)")
    parser.add_argument("--layers", action="append", default=[], metavar="SIZE=N",
                        help="--throughput: that size's stand-in with N encoder layers (e.g. 4b=8)")
    parser.add_argument("--images", type=int, default=2, help="--throughput: images per batch (256 px)")
    parser.add_argument("--clips", type=int, default=2, help="--throughput: 5 s clips per batch")
    parser.add_argument("--iters", type=int, default=3, help="--throughput: timed batches (the fastest counts)")
    parser.add_argument("--threads", type=int, default=None,
                        help="--throughput: torch threads (default torch's: one per core); 1 keeps the ratios "
                             "steady on a machine shared with other jobs, whose bursts stall multi-thread barriers")
    parser.add_argument("--conv-paths", action="store_true",
                        help="--throughput: also time each batch through the adapters' convolutions (the paths "
                             "before issue #28), alternately in the same process")
    parser.add_argument("--torch-chains", action="store_true",
                        help="--throughput: also time each batch with the elementwise chains through torch's ops "
                             "instead of the fused CPU kernels (ONE_PEACE_CPU_FUSED=torch), alternately")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: load and embed on the GPU (the GEMM rate "
                        "is then the GPU's; peak RSS stays the host process's)")
    parser.add_argument("--keep", action="store_true", help="keep the stand-in checkpoints")
    parser.add_argument("--child", choices=["load", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.child:
        if args.child == "load":
            result = measure_load(args.path, args.dtype[0], args.device)
        else:
            sys.path.insert(0, HERE)  # bench/rates.py
            from one_peace.models.host_memory import keep_freed_host_memory

            keep_freed_host_memory()  # as one-peace-index does (ONE_PEACE_MALLOC=system: glibc's defaults)
            if args.threads:
                torch.set_num_threads(args.threads)
            result = measure_throughput(args.path, args.precision[0], iters=args.iters, images=args.images,
                                        clips=args.clips, baselines=baselines(args), device=args.device)
        print(json.dumps(result))
        return
    for option in ("threads", "images", "clips", "iters"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1, got {getattr(args, option)}")
    sizes, dtypes = args.size or ["base", "4b"], args.dtype or ["bfloat16", "float32"]
    layers = {}
    for item in args.layers:
        size, _, count = item.partition("=")
        if size not in ("tiny", "base", "4b") or not count.isdigit() or int(count) < 1:
            parser.error(f"--layers {item!r}: expected SIZE=N with SIZE tiny, base or 4b and N >= 1")
        layers[size] = int(count)
    os.makedirs(args.workdir, exist_ok=True)
    print(f"Machine: {machine(args.device)}\n")
    if args.throughput:
        print(f"`{' '.join(['python', 'bench/load.py'] + (argv if argv is not None else sys.argv[1:]))}`; "
              f"{args.threads or torch.get_num_threads()} torch threads\n")
        labels = {"conv_paths": "conv paths", "torch_chains": "torch chains"}
        conv = ("".join(f" images/s, {labels[b]} | x | clips/s, {labels[b]} | x |" for b in baselines(args)),
                "---|---|---|---|" * len(baselines(args)))
        print("| size | layers | precision | images/s | GFLOP / batch | GFLOP/s | of GEMM | GEMM in profile | "
              "5 s clips/s | GFLOP / batch | GFLOP/s | of GEMM | GEMM in profile | GEMM GFLOP/s |" + conv[0])
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + conv[1])
    else:
        print("| size | params (B) | file GiB | dtype | load s | first embedding s | peak RSS GiB | "
              "RSS / file | RSS / fp32 weights |")
        print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        path = stand_in_path(args.workdir, size, layers.get(size) if args.throughput else None)
        if not os.path.isfile(path):
            start = time.perf_counter()
            count = make_stand_in(path, size, layers=layers.get(size) if args.throughput else None)
            print(f"<!-- stand-in {size}: {count / 1e9:.3f} B parameters written in "
                  f"{time.perf_counter() - start:.0f} s -->", flush=True)
        file_gib = os.path.getsize(path) / 2 ** 30
        if args.throughput:
            for precision in args.precision:
                r = run_child("throughput", path, ["--precision", precision, "--iters", str(args.iters),
                                                   "--device", args.device,
                                                   "--images", str(args.images), "--clips", str(args.clips)]
                              + [f"--{b.replace('_', '-')}" for b in baselines(args)]
                              + (["--threads", str(args.threads)] if args.threads else []))
                cells = [f"{r[k]['per_s']:.3f} | {r[k]['gflop']:.0f} | {r[k]['gflops']:.0f} | {r[k]['share']:.0%} | "
                         f"{r[k]['gemm_share_of_profile']:.0%}" for k in ("images", "clips")]
                conv = "".join(f" | {r[f'{k}_{b}']['per_s']:.3f} | {r[f'{k}_{b}']['speedup']:.2f}x"
                               for b in baselines(args) for k in ("images", "clips"))
                print(f"| {size} | {r['layers']} | {precision} | {cells[0]} | {cells[1]} | {r['gemm_gflops']:.0f}"
                      f"{conv} |", flush=True)
        for dtype in ([] if args.throughput else dtypes):
            r = run_child("load", path, ["--dtype", dtype, "--device", args.device])
            fp32_gib = r["params"] * 4 / 2 ** 30
            print(f"| {size} | {r['params'] / 1e9:.3f} | {file_gib:.2f} | {dtype} | {r['load_s']:.1f} | "
                  f"{r['first_embedding_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / file_gib:.2f} | "
                  f"{r['peak_rss_gib'] / fp32_gib:.2f} |", flush=True)
        if not args.keep:
            os.remove(path)


if __name__ == "__main__":
    main()
