"""Generated audio benchmark data shared by the audio task tests (1-2 s clips, frames, TSVs, label files)."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

TINY_SPEC = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]"


def write_clip(path, seconds, freq, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, wav.astype(np.float32), 16000)


def write_tsv(path, header, rows):
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def make_audio_data(root: Path) -> dict:
    """Every benchmark's TSVs (and label/caption files) over six generated clips under ``root``."""
    (root / "audio").mkdir()
    (root / "frames").mkdir()
    clips = []
    for i in range(6):
        name = f"audio/clip{i}.wav"
        write_clip(root / name, 1.0 + 0.2 * i, 220 * (1 + i % 3), seed=i)
        frames = []
        for f in range(3):
            frame = f"frames/clip{i}_{f}.png"
            color = np.full((40, 48, 3), 40 * (i % 3) + 20 * f, dtype=np.uint8)
            Image.fromarray(color).save(root / frame)
            frames.append(frame)
        clips.append((f"clip{i}", name, "|".join(frames), i % 3))
    cols = ["uniq_id", "audio", "text", "duration"]
    paths = {"root": root}
    paths["vgg"] = write_tsv(root / "vgg.tsv", cols, [(u, a, c, 1.0) for u, a, _, c in clips])
    paths["vgg_av"] = write_tsv(root / "vgg_av.tsv", ["uniq_id", "audio", "frames", "text", "duration"],
                                [(u, a, fr, c, 1.0) for u, a, fr, c in clips])
    paths["fsd"] = write_tsv(root / "fsd.tsv", cols, [(u, a, f"{c},{(c + 1) % 4}", 1.0) for u, a, _, c in clips])
    names = ["a dog barking", "rain falling", "a bell ringing"]
    paths["aqa"] = write_tsv(root / "aqa.tsv", cols, [
        (u, a, f"What do you hear?&&&{names[0]}&&&{names[1]}&&&{names[2]}&&&silence&&&{c}", 1.0)
        for u, a, _, c in clips])
    paths["ret_train"] = write_tsv(root / "ret_train.tsv", cols, [(u, a, names[c], 1.0) for u, a, _, c in clips])
    paths["ret_valid_file"] = str(root / "ret_valid.json")
    Path(paths["ret_valid_file"]).write_text(json.dumps({u: [names[c], f"{names[c]} outside"] for u, _, _, c in clips}))
    # ESC-50 layout: uniq_id is the class id, labels come from {class id: [label]}.
    paths["esc50"] = write_tsv(root / "esc50.tsv", cols, [(c, a, names[c], 1.0) for _, a, _, c in clips])
    paths["esc50_labels"] = str(root / "esc50_label.json")
    Path(paths["esc50_labels"]).write_text(json.dumps({str(c): [n] for c, n in enumerate(names)}))
    return paths
