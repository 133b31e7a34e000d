"""The precision a job runs in: bf16 where the hardware has it and it is measured faster, fp32 otherwise.

The run scripts ask this module (``PRECISION=auto``, their default) through its command line::

    python -m one_peace.models.precision JOB [--requested auto|bf16|fp32] [--device cpu|cuda|auto]

which prints ``bf16`` or ``fp32``.  On a GPU, auto means bf16 where the device supports it (the official
recipes train and evaluate in bf16).  On a CPU, bf16 pays off only through bf16 matrix units (AMX-BF16,
AVX512-BF16) and only where the matrix multiplies dominate the step: a tiny model's step is mostly
elementwise work and memory traffic, which bf16 does not speed up (issue #28), so each job says in
``BF16_FASTER_ON_CPU`` whether it was measured faster.  An explicit ``bf16`` or ``fp32`` always wins.
"""
import argparse
import logging
import sys

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("cpu", "cuda", "auto")

# Measured faster in bf16 than in fp32 on a CPU with bf16 matrix units (figures and commands:
# docs/BENCHMARKS.md).  Flip an entry only with a measurement of that job recorded there.
BF16_FASTER_ON_CPU = {
    # run_scripts/*/finetune.sh (the fine-tuning yamls, base / 4B sizes): a base-size fairseq step with
    # --bf16 ran 2.13x (stage 1) and 1.67x (stage 2) the fp32 step ("The training step against the GEMM
    # rate", bench/pretrain.py --precision fp32 bf16)
    "finetune": True,
    # run_scripts/*/evaluate.sh (their bf16 default): base / 4B embeddings 2.9-8x faster in bf16
    # ("CPU embedding throughput, fp32 vs bf16", bench/load.py --throughput)
    "evaluate": True,
    # run_scripts/quickstart.sh, the tiny model: a stage-1 step in bf16 0.81x the fp32 speed (0.90x paired in one
    # process after the sixth round, bench/train_steps.py --alternate-precision); its own stage 2 (the narrower
    # front end) 0.70x in fairseq-train, although the tiny preset's stage-2 step is 1.10x
    "quickstart": False,
    # run_scripts/video_quickstart.sh: the quickstart's tiny model on 8 frames
    "video_quickstart": False,
    # run_scripts/real_demo.sh: the quickstart's tiny model on real media
    "real_demo": False,
}


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set:
    """The CPU feature flags Linux lists (empty where the file does not exist: other systems)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 matrix units (AMX-BF16 or AVX512-BF16).

    torch's own probes where this torch has them (the AMX one also checks that the OS enabled the tiles,
    which the flags in /proc/cpuinfo do not say; every CPU with AMX tiles so far has AMX-BF16); else the
    ``amx_bf16`` / ``avx512_bf16`` flags of ``cpuinfo``.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    probes = [probe for probe in probes if callable(probe)]
    if probes:
        return any(probe() for probe in probes)
    return bool(_cpuinfo_flags(cpuinfo) & {"amx_bf16", "avx512_bf16"})


def warn_if_bf16_is_slow_here(what: str) -> bool:
    """Log a warning that ``what`` runs bf16 on a CPU without bf16 matrix units; True if it warned.

    There torch's CPU bf16 matrix multiplies take a slow path: 1.2 GFLOP/s against 96 in float32 at 512³
    on a 2-core AVX2 AMD EPYC (``docs/BENCHMARKS.md``), so an explicit bf16 request is almost always a mistake.
    """
    if cpu_has_bf16_units():
        return False
    logger.warning("%s runs in bf16 on a CPU without bf16 matrix units (AMX-BF16 / AVX512-BF16): torch's bf16 "
                   "matrix multiplies are about 100x slower than float32 on such CPUs (docs/BENCHMARKS.md); "
                   "float32 is faster here", what)
    return True


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def training_precision(job: str, requested: str = "auto", device: str = "cpu") -> str:
    """``"bf16"`` or ``"fp32"`` for ``job`` (a key of ``BF16_FASTER_ON_CPU``) on ``device`` (``cpu``,
    ``cuda``, or ``auto``: cuda when torch sees a GPU); ``requested`` is the user's ``PRECISION``."""
    if requested not in PRECISIONS:
        raise ValueError(f"PRECISION must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if job not in BF16_FASTER_ON_CPU:
        raise ValueError(f"unknown job {job!r}; known jobs: {', '.join(BF16_FASTER_ON_CPU)}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if requested != "auto":
        if requested == "bf16" and (device == "cpu" or (device == "auto" and not torch.cuda.is_available())):
            warn_if_bf16_is_slow_here(f"PRECISION=bf16 ({job})")
        return requested
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "bf16" if cuda_has_bf16() else "fp32"
    return "bf16" if BF16_FASTER_ON_CPU[job] and cpu_has_bf16_units() else "fp32"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="one-peace-precision", description="Print the precision (bf16 or fp32) a job should run in.",
        epilog="auto: bf16 on a GPU that supports it; on a CPU, bf16 only with bf16 matrix units (AMX-BF16, "
               "AVX512-BF16) and for a job measured faster in bf16 (models/precision.py, docs/BENCHMARKS.md).")
    parser.add_argument("job", help=f"one of {', '.join(BF16_FASTER_ON_CPU)}")
    parser.add_argument("--requested", default="auto", help="auto | bf16 | fp32: the user's PRECISION (default auto)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda when torch sees a GPU; default cpu)")
    args = parser.parse_args(argv)
    try:
        print(training_precision(args.job, args.requested, args.device))
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
