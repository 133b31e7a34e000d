"""The Tux Paint stamps of ``run_scripts/fetch_real_media.sh``'s cache, as the real-data demo
(``run_scripts/real_demo_data.py``) and the local MTEB tasks (``mteb_eval/tuxpaint.py``) read them."""
import re

from PIL import Image


def concept_key(caption: str) -> str:
    """A *concept* is one caption: ``frog.png`` and ``frog-1.png`` are both "A frog."."""
    return re.sub(r"[^a-z0-9]+", " ", caption.lower()).strip()


def square_on_white(path: str, size: int) -> Image.Image:
    """The stamp composited on white (the colour under its transparent pixels is arbitrary), centred on
    a square, resized to ``size`` (bicubic)."""
    with Image.open(path) as img:
        img.load()
        rgba = img.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
