"""What batch-independent audio embeddings cost: one padded forward (official) vs rows grouped by length.

Embeds the same real sounds (default: the Tux Paint stamp sounds of ``run_scripts/fetch_real_media.sh``)
in batches, once with ``official_padding=True`` (one padded forward per batch; a clip's vector depends
on the longest clip beside it) and once with the default (rows of equal length run together, trimmed).
Reports the time per clip of each, and the largest difference between a clip's vector in its batch and
the clip embedded alone.

    python bench/audio_batching.py                      # base-size stand-in (bench/load.py), 32 sounds
    python bench/audio_batching.py --checkpoint one-peace.pt --dtype bfloat16 --batch-size 16
"""
import argparse
import datetime
import glob
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("ONE_PEACE_SHARED", os.path.join(HERE, "..", "..", "shared"))
REAL_MEDIA = os.path.expanduser("~/.cache/one_peace/real_media/tuxpaint")


def embed_all(hub, paths, batch_size):
    out, start = [], time.perf_counter()
    for i in range(0, len(paths), batch_size):
        out.append(hub.extract_audio_features(*hub.process_audio(paths[i:i + batch_size])).float())
    return torch.cat(out), time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="official-format checkpoint (default: bench/load.py's stand-in)")
    parser.add_argument("--size", default="base", choices=("tiny", "base", "4b"))
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/one_peace/bench"))
    parser.add_argument("--bpe-dir", default=os.path.join(SHARED, "assets", "bpe"))
    parser.add_argument("--sounds", default=REAL_MEDIA, help="folder searched for .ogg/.wav/.flac files")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    if args.count < 1 or args.batch_size < 1:
        parser.error("--count and --batch-size must be at least 1")
    paths = sorted(p for ext in ("ogg", "wav", "flac") for p in glob.glob(f"{args.sounds}/**/*.{ext}",
                                                                          recursive=True))[:args.count]
    if not paths:
        parser.error(f"no sounds under {args.sounds} (run run_scripts/fetch_real_media.sh, or pass --sounds)")
    if args.checkpoint is None:
        sys.path.insert(0, HERE)
        from load import ensure_stand_in

        args.checkpoint = ensure_stand_in(args.workdir, args.size)
    from one_peace import from_pretrained

    hubs = {mode: from_pretrained(args.checkpoint, device="cpu", dtype=args.dtype, bpe_dir=args.bpe_dir,
                                  modalities=("text", "audio"), official_padding=(mode == "official"))
            for mode in ("official", "grouped")}
    alone, _ = embed_all(hubs["grouped"], paths, 1)
    rows = []
    for mode, hub in hubs.items():
        embed_all(hub, paths[:args.batch_size], args.batch_size)  # warm-up
        vectors, seconds = embed_all(hub, paths, args.batch_size)
        rows.append((mode, seconds, (vectors - alone).abs().max().item()))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{datetime.date.today()}; `python bench/audio_batching.py --count {args.count} --batch-size "
          f"{args.batch_size} --dtype {args.dtype}` ({os.path.basename(args.checkpoint)}, {len(paths)} sounds)\n")
    print("| batching | ms per clip | x official | max abs diff, in batch vs alone |")
    print("|---|---|---|---|")
    for mode, seconds, diff in rows:
        print(f"| {mode} | {1000 * seconds / len(paths):.1f} | {seconds / rows[0][1]:.2f} | {diff:.2e} |")


if __name__ == "__main__":
    main()
