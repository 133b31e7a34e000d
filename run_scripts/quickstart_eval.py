"""Zero-shot evaluation of the quickstart checkpoints on the held-out synthetic split.

Every held-out image (clip) is scored against all distinct captions of its kind
(``image_captions.json`` / ``audio_captions.json``); it counts as correct when its own
caption has the highest cosine similarity.  The stage-1 checkpoint (text + image) scores
images, the stage-2 checkpoint (text + audio) scores clips.

    python run_scripts/quickstart_eval.py --data DIR --bpe-dir BPE \
        --image-checkpoint stage1/checkpoint_last.pt --audio-checkpoint stage2/checkpoint_last.pt

The last line printed is ``quickstart: image_to_text_acc=X audio_to_text_acc=Y``.
"""
import argparse
import csv
import json
import logging
import os
import sys
import time

import torch


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def zero_shot_accuracy(hub, rows, media_col, caption_col, captions, data_dir, kind, batch_size=64):
    """Fraction of rows whose caption is the arg-max over ``captions``; also per-caption counts."""
    index = {c: i for i, c in enumerate(captions)}
    missing = sorted({r[caption_col] for r in rows} - set(index))
    if missing:
        raise ValueError(f"held-out {kind} captions missing from the caption list: {missing}")
    with torch.no_grad():
        text = hub.extract_text_features(hub.process_text(captions)).float()
    correct = 0
    confusion = torch.zeros(len(captions), len(captions), dtype=torch.long)
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        paths = [os.path.join(data_dir, r[media_col]) for r in batch]
        with torch.no_grad():
            if kind == "image":
                feats = hub.extract_image_features(hub.process_image(paths))
            else:
                feats = hub.extract_audio_features(*hub.process_audio(paths))
        pred = (feats.float() @ text.T).argmax(dim=-1)
        target = torch.tensor([index[r[caption_col]] for r in batch])
        correct += int((pred == target).sum())
        for t, p in zip(target.tolist(), pred.tolist()):
            confusion[t, p] += 1
    return correct / max(len(rows), 1), confusion


def report(kind, captions, acc, confusion, n):
    print(f"[eval] {kind}-to-text zero-shot accuracy: {acc:.3f} on {n} held-out {kind}s "
          f"({len(captions)} candidate captions, chance {1 / len(captions):.3f})", flush=True)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    worst = sorted(range(len(captions)), key=lambda i: per_class[i])[:3]
    print("[eval]   weakest captions: " + ", ".join(f"{captions[i]!r} {per_class[i]:.2f}" for i in worst),
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory written by one_peace.data_utils.synthetic")
    parser.add_argument("--image-checkpoint", required=True, help="stage-1 checkpoint (text + image)")
    parser.add_argument("--audio-checkpoint", required=True, help="stage-2 checkpoint (text + audio)")
    parser.add_argument("--bpe-dir", default=None)
    parser.add_argument("--image-tsv", default="image_text_valid.tsv")
    parser.add_argument("--audio-tsv", default="audio_text_valid.tsv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    from one_peace import from_pretrained

    start = time.time()
    accs = {}
    for kind, ckpt, tsv, media_col, caption_col, caption_file in (
            ("image", args.image_checkpoint, args.image_tsv, "image", "caption", "image_captions.json"),
            ("audio", args.audio_checkpoint, args.audio_tsv, "audio", "text", "audio_captions.json")):
        with open(os.path.join(args.data, caption_file), encoding="utf-8") as f:
            captions = json.load(f)
        rows = read_tsv(os.path.join(args.data, tsv))
        hub = from_pretrained(ckpt, model_type="one_peace_retrieval", device="cpu", bpe_dir=args.bpe_dir)
        acc, confusion = zero_shot_accuracy(hub, rows, media_col, caption_col, captions, args.data, kind)
        report(kind, captions, acc, confusion, len(rows))
        accs[kind] = acc
    print(f"[eval] done in {time.time() - start:.1f}s", flush=True)
    sys.stdout.flush()
    print(f"quickstart: image_to_text_acc={accs['image']:.3f} audio_to_text_acc={accs['audio']:.3f}", flush=True)


if __name__ == "__main__":
    main()
