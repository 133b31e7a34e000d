"""Vectors with the structure of real embeddings, for the search benchmark (``bench/search.py --data real``).

No trained checkpoint can be had on this machine, and the random-weight stand-ins of ``bench/load.py``
map every input to one direction (base size: cosine 0.99999 between any two images; their centred
residue has a participation dimension near 2), which would measure nothing.  So:

1. **Real embeddings.** Real media -- the pictures of ``run_scripts/fetch_real_media.sh``
   (``$ONE_PEACE_CACHE/real_media``: Pillow's test images, Tux Paint stamps, ...) and the shared
   ``assets/media`` files, the sounds (Tux Paint's Ogg stamps, SciPy's WAVs, the shared FLACs) -- each in
   :data:`VIEWS` augmented views (images: as is; a random crop of 50-100 % of the area; a mirror with
   brightness, contrast and saturation jittered by up to 30 %; a rotation of up to 15 degrees in grey;
   sounds: as is; gain 0.5-1.5 with noise at 20 dB SNR; resampled 10 % faster or slower; a crop of
   70 %), embedded by the ONE-PEACE retrieval model of the parity fixtures (``shared/fixtures``: the
   tiny architecture, 64-d, image and audio branches; its weights vary the outputs: mean cosine 0.35
   between different pictures).  Cached in ``$ONE_PEACE_CACHE/bench/real_embeddings.npz``.
2. **768-d.** A fixed random orthonormal map (64 -> 768) keeps every inner product.
3. **A million.** Each vector: a real embedding of views 0-2 (``bases``), half the time mixed with a
   second one (weight 0-0.5: a picture with two subjects), plus gaussian noise in all 768 dimensions of
   norm :data:`NOISE` (two copies of one base: cosine about 0.8), renormalised.  Queries are made the
   same way from the held-out view 3 of every file, so no query is a perturbed copy of a base vector
   it would find.
"""
import glob
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED_MEDIA = os.path.join(REPO, "..", "shared", "assets", "media")
VIEWS = 4
NOISE = 0.5
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SOUND_EXTENSIONS = (".ogg", ".wav", ".flac")


def _cache_root():
    return os.path.expanduser(os.environ.get("ONE_PEACE_CACHE") or os.path.join("~", ".cache", "one_peace"))


def media_files():
    """(pictures, sounds) found in the real-media cache and the shared assets, sorted."""
    roots = [os.path.join(_cache_root(), "real_media"), SHARED_MEDIA]
    found = [p for r in roots for p in glob.glob(os.path.join(r, "**", "*"), recursive=True) if os.path.isfile(p)]
    pick = lambda exts: sorted(p for p in found if p.lower().endswith(exts))  # noqa: E731
    return pick(IMAGE_EXTENSIONS), pick(SOUND_EXTENSIONS)


def _image_views(image, rng):
    from PIL import Image, ImageEnhance, ImageOps

    w, h = image.size
    scale = np.sqrt(rng.uniform(0.5, 1.0))
    cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    jitter = ImageOps.mirror(image)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        jitter = enhance(jitter).enhance(rng.uniform(0.7, 1.3))
    turned = ImageOps.grayscale(image).convert("RGB").rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    return [image, image.crop((x, y, x + cw, y + ch)), jitter, turned]


def _sound_views(wav, rng):
    from one_peace.data_utils.audio import resample

    noisy = wav * rng.uniform(0.5, 1.5)
    noisy = noisy + rng.standard_normal(len(wav)).astype(np.float32) * np.std(noisy) * 0.1  # 20 dB SNR
    rate = 16000 * (1.1 if rng.random() < 0.5 else 0.9)
    start = int(rng.integers(0, max(1, int(0.3 * len(wav)))))
    return [wav, noisy.astype(np.float32), resample(wav, int(rate), 16000), wav[start:start + int(0.7 * len(wav))]]


def _fixture_hub(workdir):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers import BPE_ASSETS, load_fixture
    from search_helpers import write_checkpoint

    from one_peace.hub import from_pretrained

    bpe = os.path.join(workdir, "fixture_bpe")
    os.makedirs(bpe, exist_ok=True)
    with open(os.path.join(bpe, "dict.txt"), "w") as fh:
        fh.write("".join(f"{s} 1\n" for s in load_fixture("inputs.pt")["dict_symbols"][4:]))
    for name in ("encoder.json", "vocab.bpe"):
        if not os.path.exists(os.path.join(bpe, name)):
            os.symlink(BPE_ASSETS / name, os.path.join(bpe, name))
    checkpoint = write_checkpoint(os.path.join(workdir, "fixture_retrieval.pt"))
    return from_pretrained(checkpoint, device="cpu", bpe_dir=bpe)


def embed_real_media(workdir, max_images=1500, seed=0):
    """(embeddings (N, VIEWS, 64) float32, kinds ['image'|'audio'] * N), cached."""
    cache = os.path.join(_cache_root(), "bench", "real_embeddings.npz")
    if os.path.exists(cache):
        data = np.load(cache)
        return data["embeddings"], list(data["kinds"])
    from PIL import Image

    from one_peace.data_utils.audio import load_audio
    from one_peace.search.embed_sources import audio_input

    hub = _fixture_hub(workdir)
    rng = np.random.default_rng(seed)
    pictures, sounds = media_files()
    out, kinds = [], []
    for path in pictures:
        if len([k for k in kinds if k == "image"]) >= max_images:
            break
        try:
            with Image.open(path) as img:
                if img.size[0] * img.size[1] > 20_000_000 or min(img.size) < 8:
                    continue
                image = img.convert("RGB")
        except Exception:  # noqa: BLE001 - Pillow's test images include broken files on purpose
            continue
        views = _image_views(image, rng)
        out.append(hub.extract_features("image", **hub.process("image", views)).float().numpy())
        kinds.append("image")
    for path in sounds:
        try:
            wav = load_audio(path)
        except (ValueError, OSError):
            continue
        if len(wav) < 1600:
            continue
        views = _sound_views(wav[:16000 * 15], rng)
        out.append(hub.extract_features("audio", **audio_input(hub, views, path)).float().numpy())
        kinds.append("audio")
    embeddings = np.stack(out).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=2, keepdims=True)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez(cache, embeddings=embeddings, kinds=np.array(kinds))
    return embeddings, kinds


def lift(x, dim, seed=0):
    """``x`` (N, d) into ``dim`` dimensions by a fixed random orthonormal map (inner products kept)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, x.shape[1])))
    return (x @ q.T.astype(np.float32)).astype(np.float32)


def synthesize(seeds, n, rng, noise=NOISE, chunk=100_000):
    """``n`` unit vectors around ``seeds`` (M, D): half mixed with a second seed, all with gaussian noise."""
    dim = seeds.shape[1]
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        a = seeds[rng.integers(0, len(seeds), m)]
        b = seeds[rng.integers(0, len(seeds), m)]
        w = (rng.random(m) < 0.5) * rng.uniform(0.0, 0.5, m)
        x = (1 - w[:, None]) * a + w[:, None] * b
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += rng.standard_normal((m, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def real_structured(n, n_queries, dim, workdir, rng):
    """(data (n, dim), queries (n_queries, dim), a line saying how they were made)."""
    embeddings, kinds = embed_real_media(workdir)
    lifted = lift(embeddings.reshape(-1, embeddings.shape[2]), dim).reshape(len(embeddings), VIEWS, dim)
    bases, held_out = lifted[:, :3].reshape(-1, dim), lifted[:, 3]
    note = (f"{kinds.count('image')} pictures and {kinds.count('audio')} sounds x {VIEWS} views, fixture model "
            f"(64-d) lifted to {dim}-d; {len(bases)} bases, noise {NOISE}, queries from the held-out view")
    return synthesize(bases, n, rng), synthesize(held_out, n_queries, rng), note
