"""Shared test fixtures: locations of ../shared and a BPE dir matching the parity fixtures."""
import argparse
import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("ONE_PEACE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official-parity"
BPE_ASSETS = SHARED / "assets" / "bpe"
MEDIA = SHARED / "assets" / "media"


def _require(path: pathlib.Path):
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: tests need the shared/ folder beside the repository "
                                f"(or ONE_PEACE_SHARED pointing to it)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir():
    return _require(FIXTURES)


@pytest.fixture(scope="session")
def bpe_assets():
    return _require(BPE_ASSETS)


@pytest.fixture(scope="session")
def media_dir():
    return _require(MEDIA)


def load_fixture(name):
    return torch.load(_require(FIXTURES / name), weights_only=True)


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
