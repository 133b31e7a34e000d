"""Zero-shot and emergent evaluation of the real-data demonstration (run_scripts/real_demo.sh).

For a split (``valid``: held-out concepts, never seen in training; ``train``: the training concepts):

* image -> text top-1: each image against the captions of the split's image concepts;
* audio -> text top-1: each sound against the captions of the split's sound concepts;
* emergent audio -> image: each sound ranks all images of the split; the rank of the best-ranked
  image of its own concept.  Audio and images were never paired in training (stage 1: images with
  text; stage 2: sounds with text, the text tower frozen), so any skill here comes through the shared
  text space only.  Images are embedded by the stage-1 checkpoint, sounds by the stage-2 checkpoint
  (the text embeddings of the two must agree: checked and printed).

Chance: 1 / candidates for top-1; for the emergent ranking, a concept with k of the N images has
top-1 chance k / N and an expected best rank of (N + 1) / (k + 1).

    python run_scripts/real_demo_eval.py --data DIR --image-checkpoint S1.pt --audio-checkpoint S2.pt
        [--emergent-image-checkpoint S1_FINAL.pt] [--bpe-dir BPE] [--json OUT.json]

The last line printed is ``real_demo: image_to_text_top1=X (chance c) audio_to_text_top1=Y (chance c)
audio_to_image_top1=Z (chance c) audio_to_image_median_rank=R/N (chance r)`` for the held-out split.
"""
import argparse
import json
import logging
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quickstart_eval import read_tsv  # noqa: E402 - beside this file


def embed(hub, kind, paths, batch_size=64):
    feats = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            if kind == "image":
                feats.append(hub.extract_image_features(hub.process_image(batch)))
            elif kind == "audio":
                feats.append(hub.extract_audio_features(*hub.process_audio(batch)))
            else:
                feats.append(hub.extract_text_features(hub.process_text(batch)))
    return torch.cat(feats).float()


def top1(media_feats, caption_of_row, hub, captions):
    """(top-1 accuracy, the predicted caption of each row)."""
    text = embed(hub, "text", captions)
    index = {c: i for i, c in enumerate(captions)}
    target = torch.tensor([index[c] for c in caption_of_row])
    pred = (media_feats @ text.T).argmax(-1)
    return float((pred == target).float().mean()), [captions[i] for i in pred.tolist()]


def category_top1(predicted, truth, captions, category_of):
    """How often the predicted caption names the true caption's category, and that rate by chance."""
    hits = [category_of.get(p) == category_of.get(t) for p, t in zip(predicted, truth)]
    chance = [sum(category_of.get(c) == category_of.get(t) for c in captions) / len(captions) for t in truth]
    return sum(hits) / len(hits), statistics.mean(chance)


def categories(data):
    """caption text -> the stamp category it names (concepts.json of real_demo_data.py)."""
    with open(os.path.join(data, "concepts.json"), encoding="utf-8") as f:
        return {c["text"]: c["category"] for c in json.load(f).values()}


def evaluate_split(data, split, image_hub, audio_hub, emergent_hub):
    images = read_tsv(os.path.join(data, f"image_text_{split}.tsv"))
    sounds = read_tsv(os.path.join(data, f"audio_text_{split}.tsv"))
    image_feats = embed(image_hub, "image", [os.path.join(data, r["image"]) for r in images])
    audio_feats = embed(audio_hub, "audio", [os.path.join(data, r["audio"]) for r in sounds])
    image_captions = sorted({r["caption"] for r in images})
    audio_captions = sorted({r["text"] for r in sounds})
    i2t, i2t_pred = top1(image_feats, [r["caption"] for r in images], image_hub, image_captions)
    a2t, _ = top1(audio_feats, [r["text"] for r in sounds], audio_hub, audio_captions)
    out = {"split": split, "images": len(images), "sounds": len(sounds),
           "image_to_text_top1": i2t, "image_to_text_chance": 1 / len(image_captions),
           "audio_to_text_top1": a2t, "audio_to_text_chance": 1 / len(audio_captions)}
    if os.path.isfile(os.path.join(data, "concepts.json")):
        # does a wrong answer at least name the right kind of thing ("... Animals: birds.")?
        out["image_to_text_category_top1"], out["image_to_text_category_chance"] = category_top1(
            i2t_pred, [r["caption"] for r in images], image_captions, categories(data))
    # emergent audio -> image, with the image embeddings of the checkpoint stage 2 started from
    if emergent_hub is not image_hub:
        image_feats = embed(emergent_hub, "image", [os.path.join(data, r["image"]) for r in images])
    concept_of_image = [r["concept"] for r in images]
    scores = audio_feats @ image_feats.T
    ranks, chance_top1, chance_rank = [], [], []
    n = len(images)
    for i, row in enumerate(sounds):
        own = torch.tensor([c == row["concept"] for c in concept_of_image])
        k = int(own.sum())
        if k == 0:
            continue  # the concept's images were all undecodable (reported by real_demo_data.py)
        best_own = scores[i][own].max()
        ranks.append(1 + int((scores[i][~own] > best_own).sum()))
        chance_top1.append(k / n)
        chance_rank.append((n + 1) / (k + 1))
    out.update({"audio_to_image_top1": sum(r == 1 for r in ranks) / len(ranks),
                "audio_to_image_top1_chance": statistics.mean(chance_top1),
                "audio_to_image_median_rank": statistics.median(ranks),
                "audio_to_image_mean_rank": statistics.mean(ranks),
                "audio_to_image_mean_rank_chance": statistics.mean(chance_rank),
                "audio_to_image_ranks": ranks})
    return out


def text_drift(image_hub, audio_hub, data):
    """Largest difference between the two checkpoints' text embeddings (0 when stage 2 froze text)."""
    with open(os.path.join(data, "concepts.json"), encoding="utf-8") as f:
        texts = [c["text"] for c in json.load(f).values()][:64]
    return float((embed(image_hub, "text", texts) - embed(audio_hub, "text", texts)).abs().max())


def summary_line(r):
    return (f"real_demo: image_to_text_top1={r['image_to_text_top1']:.3f} (chance {r['image_to_text_chance']:.3f}) "
            f"audio_to_text_top1={r['audio_to_text_top1']:.3f} (chance {r['audio_to_text_chance']:.3f}) "
            f"audio_to_image_top1={r['audio_to_image_top1']:.3f} (chance {r['audio_to_image_top1_chance']:.3f}) "
            f"audio_to_image_median_rank={r['audio_to_image_median_rank']:g}/{r['images']} "
            f"(chance {r['audio_to_image_mean_rank_chance']:.1f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory written by run_scripts/real_demo_data.py")
    parser.add_argument("--image-checkpoint", required=True, help="stage-1 checkpoint (text + image)")
    parser.add_argument("--audio-checkpoint", required=True, help="stage-2 checkpoint (text + audio)")
    parser.add_argument("--emergent-image-checkpoint", default=None,
                        help="embeds the images for audio -> image (default --image-checkpoint): the one "
                             "stage 2 started from, when --image-checkpoint is an earlier one")
    parser.add_argument("--bpe-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the figures (both splits) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from one_peace import from_pretrained

    image_hub = from_pretrained(args.image_checkpoint, device="cpu", bpe_dir=args.bpe_dir)
    audio_hub = from_pretrained(args.audio_checkpoint, device="cpu", bpe_dir=args.bpe_dir)
    emergent_hub = image_hub
    if args.emergent_image_checkpoint and args.emergent_image_checkpoint != args.image_checkpoint:
        emergent_hub = from_pretrained(args.emergent_image_checkpoint, device="cpu", bpe_dir=args.bpe_dir)
    drift = text_drift(emergent_hub, audio_hub, args.data)
    results = {split: evaluate_split(args.data, split, image_hub, audio_hub, emergent_hub)
               for split in ("train", "valid")}
    results["text_embedding_drift"] = drift
    print(f"[eval] text embeddings of the two checkpoints differ by at most {drift:.2e}", flush=True)
    for split in ("train", "valid"):
        r = results[split]
        name = "training concepts (seen)" if split == "train" else "held-out concepts (unseen)"
        print(f"[eval] {name}: {r['images']} images, {r['sounds']} sounds: " +
              summary_line(r).split(": ", 1)[1], flush=True)
        if "image_to_text_category_top1" in r:
            print(f"[eval]   image->text names the right category: {r['image_to_text_category_top1']:.3f} "
                  f"(chance {r['image_to_text_category_chance']:.3f})", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(summary_line(results["valid"]), flush=True)


if __name__ == "__main__":
    main()
