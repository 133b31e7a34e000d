"""Helpers of the search tests (test_search.py, test_search_browser.py): the tiny retrieval checkpoint
of the parity fixtures, generated files of every kind, in-process one-peace-index, a live server."""
import json
import os
import socket
import threading
import time

import numpy as np
import soundfile as sf
import torch
from helpers import FIXTURES, load_fixture
from PIL import Image

MEDIA_FILES = {"image": 4, "audio": 2}  # dog/elephant/one_piece/pokemons, cow/dog.flac (the .json is ignored)


def write_checkpoint(path, perturb: bool = False):
    """The fixtures' retrieval model (text, image, audio) as a fairseq checkpoint; ``perturb`` gives
    another model of the same shape (another checkpoint to be refused)."""
    cfg = json.loads((FIXTURES / "config.json").read_text())["retrieval_cfg"]
    weights = load_fixture("pretrain_state_dict.pt")
    keys = load_fixture("retrieval_hub.pt")["retrieval_state_dict_keys"]
    model = {k: weights[k] for k in keys if k in weights}
    if perturb:
        model["text_proj.weight"] = model["text_proj.weight"] + 0.01
    torch.save({"args": None, "cfg": cfg, "model": model}, path)
    return str(path)


def write_wav(path, freq: float, seconds: float = 1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)


def write_png(path, colour, size=(48, 40)):
    Image.new("RGB", size, colour).save(path)


def write_mp4(path):
    from one_peace.data_utils.synthetic_video import render_clip, write_clip

    write_clip(str(path), render_clip("red", "circle", "moving left", np.random.default_rng(0)))


def make_collection(root, outside):
    """Generated files of every kind: a text, a TSV of texts, a wav, a png, an mp4, a corrupt jpg,
    and a symlink to a picture outside the roots (indexed, never served)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "note.txt").write_text("a dog barking at a cow in the field\n")
    (root / "captions.tsv").write_text("id\ttext\n1\tan elephant walking in the grass\n2\ta red circle moving left\n")
    write_wav(root / "tone.wav", 440.0)
    write_png(root / "red.png", (220, 20, 20))
    write_mp4(root / "clip.mp4")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG at all")
    outside.mkdir(parents=True, exist_ok=True)
    write_png(outside / "secret.png", (10, 200, 10))
    os.symlink(outside / "secret.png", root / "leak.png")
    return root


def index_main(argv, capsys=None):
    """one-peace-index in this process; (exit code, summary dict or None, stderr text)."""
    from one_peace.search.indexer import main

    code = main([str(a) for a in argv] + ["--json", "--progress", "none"])
    if capsys is None:
        return code, None, ""
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code in (0, 130) else None), out.err


def search_json(argv, capsys):
    """one-peace-search --json in this process: the parsed answer (exit code 0 asserted)."""
    from one_peace.search.query import main

    code = main([str(a) for a in argv] + ["--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def search_error(argv, capsys):
    """one-peace-search expected to refuse: its one error line."""
    from one_peace.search.query import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("one-peace-search: error: ") and err.count("\n") == 1, err
    return err


class LiveServer:
    """uvicorn serving ``app`` in a thread, on a loopback socket bound first (no port race)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the search server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


UPLOAD_LIMIT = 100_000  # bytes: dog.JPEG (152 kB) is over it, the wavs and clip.mp4 under
