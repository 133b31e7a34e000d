"""Shared pytest fixtures (plain helpers live in ``helpers.py``)."""
import argparse
import json

import pytest
import torch
from helpers import BPE_ASSETS, FIXTURES, MEDIA, REPO, load_fixture
from helpers import require as _require


@pytest.fixture
def interpret(monkeypatch):
    """The Triton kernels under Triton's interpreter (CPU) for this test; they pick compiled or interpreted code
    at launch time (``models/kernels/_triton_utils.py``), so other tests are not switched."""
    from one_peace.models.kernels import triton_available

    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch):
    """The Triton kernels compiled (GPU tests)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="session")
def fixtures_dir():
    return _require(FIXTURES)


@pytest.fixture(scope="session")
def bpe_assets():
    return _require(BPE_ASSETS)


@pytest.fixture(scope="session")
def media_dir():
    return _require(MEDIA)


@pytest.fixture(scope="session")
def fixture_bpe_dir(tmp_path_factory):
    """encoder.json/vocab.bpe from the assets + the fixture's 252-line dict.txt."""
    inputs = load_fixture("inputs.pt")
    out = tmp_path_factory.mktemp("fixture_bpe")
    (out / "dict.txt").write_text("".join(f"{s} 1\n" for s in inputs["dict_symbols"][4:]))
    for name in ("encoder.json", "vocab.bpe"):
        (out / name).symlink_to(_require(BPE_ASSETS / name))
    return str(out)


@pytest.fixture(scope="session")
def user_dir():
    from fairseq import utils

    utils.import_user_module(argparse.Namespace(user_dir=str(REPO / "user_src")))
    return str(REPO / "user_src")


@pytest.fixture(scope="session")
def retrieval_checkpoint(tmp_path_factory, fixtures_dir):
    """The fixture's retrieval model (text, image, audio): pretrain weights restricted to the retrieval
    keys + the retrieval cfg, as a checkpoint file (use with ``fixture_bpe_dir``)."""
    hub_ref = load_fixture("retrieval_hub.pt")
    state_dict = load_fixture("pretrain_state_dict.pt")
    cfg = json.loads((fixtures_dir / "config.json").read_text())["retrieval_cfg"]
    path = tmp_path_factory.mktemp("retrieval") / "retrieval.pt"
    keys = [k for k in hub_ref["retrieval_state_dict_keys"] if k in state_dict]
    torch.save({"args": None, "cfg": cfg, "model": {k: state_dict[k] for k in keys}}, path)
    return str(path)
