"""Zero-shot evaluation of the video quickstart checkpoint on the held-out clips.

* ``video_to_text_acc``: every held-out clip is scored against all distinct captions
  (``video_captions.json``); correct when its own caption has the highest cosine similarity.
* ``motion_acc``: every held-out clip whose motion has a time reversal (left/right, up/down,
  growing/shrinking) is scored against the caption with the reversed motion (same colour and
  shape); correct when its own caption scores higher.  A model that ignores frame order scores 0.5.

    python run_scripts/video_quickstart_eval.py --data DIR --checkpoint video/checkpoint_last.pt [--bpe-dir BPE]

The last line printed is ``video_quickstart: video_to_text_acc=X motion_acc=Y``.
"""
import argparse
import json
import logging
import os
import time

from quickstart_eval import read_tsv  # this script runs from run_scripts/, beside it


def reversed_caption(caption: str):
    """The caption with the motion reversed, or None (rotating has no counterpart)."""
    from one_peace.data_utils.synthetic_video import REVERSED

    for motion, other in REVERSED.items():
        if caption.endswith(" " + motion):
            return caption[: -len(motion)] + other
    return None


def evaluate(hub, rows, captions, data_dir, batch_size=32):
    """(video_to_text_acc, motion_acc, backwards_motion_acc, motion pair count) of ``rows`` against
    ``captions``.  ``backwards_motion_acc`` is ``motion_acc`` with every clip played backwards: a model
    that reads frame order then prefers the reversed caption."""
    index = {c: i for i, c in enumerate(captions)}
    missing = sorted({r["text"] for r in rows} - set(index))
    if missing:
        raise ValueError(f"held-out captions missing from the caption list: {missing}")
    text = hub.extract_text_features(hub.process_text(captions)).float()
    correct = motion_total = 0
    motion_correct = {False: 0, True: 0}  # by reversed
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        clips = hub.process_video([os.path.join(data_dir, r["video"]) for r in batch])["src_videos"]
        for backwards in (False, True):
            videos = hub.extract_video_features(src_videos=clips.flip(1) if backwards else clips)
            scores = videos.float() @ text.T
            for row, score in zip(batch, scores):
                own = index[row["text"]]
                if not backwards:
                    correct += int(score.argmax()) == own
                other = reversed_caption(row["text"])
                if other is not None:
                    motion_total += not backwards
                    motion_correct[backwards] += bool(score[own] > score[index[other]])
    total, pairs = max(len(rows), 1), max(motion_total, 1)
    return correct / total, motion_correct[False] / pairs, motion_correct[True] / pairs, motion_total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory written by one_peace.data_utils.synthetic_video")
    parser.add_argument("--checkpoint", required=True, help="video_text_pretrain checkpoint")
    parser.add_argument("--bpe-dir", default=None)
    parser.add_argument("--tsv", default="video_text_valid.tsv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from one_peace import from_pretrained

    start = time.time()
    with open(os.path.join(args.data, "video_captions.json"), encoding="utf-8") as f:
        captions = json.load(f)
    rows = read_tsv(os.path.join(args.data, args.tsv))
    hub = from_pretrained(args.checkpoint, model_type="one_peace_retrieval", device="cpu", bpe_dir=args.bpe_dir)
    acc, motion_acc, backwards, pairs = evaluate(hub, rows, captions, args.data)
    print(f"[eval] video-to-text accuracy {acc:.3f} on {len(rows)} held-out clips ({len(captions)} captions, "
          f"chance {1 / len(captions):.3f}); motion accuracy {motion_acc:.3f} on {pairs} reversed-motion pairs "
          f"(chance 0.5); {time.time() - start:.1f}s", flush=True)
    print(f"[eval] the same clips played backwards: motion accuracy {backwards:.3f} (a model that reads frame "
          "order falls below 0.5: it prefers the reversed caption)", flush=True)
    print(f"video_quickstart: video_to_text_acc={acc:.3f} motion_acc={motion_acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
