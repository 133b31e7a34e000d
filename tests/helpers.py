"""Helpers shared by the tests (import with ``from helpers import ...``; pytest fixtures stay in conftest)."""
import os
import pathlib

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("ONE_PEACE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official-parity"
TASK_FIXTURES = SHARED / "fixtures" / "official-parity-tasks"
BPE_ASSETS = SHARED / "assets" / "bpe"
MEDIA = SHARED / "assets" / "media"


def require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: tests need the shared/ folder beside the repository "
                                f"(or ONE_PEACE_SHARED pointing to it)")
    return path


def load_fixture(name):
    return torch.load(require(FIXTURES / name), weights_only=True)


def load_task_fixture(name):
    """A file of the fine-tuning fixtures (official-parity-tasks)."""
    return torch.load(require(TASK_FIXTURES / name), weights_only=True)


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to max |expected| over the finite entries (0 when both are
    all zero); infinite if the non-finite entries (e.g. -inf attention masks) differ."""
    actual, expected = actual.double(), expected.double()
    finite = torch.isfinite(expected)
    if not torch.equal(torch.isfinite(actual), finite) or not torch.equal(actual[~finite], expected[~finite]):
        return float("inf")
    actual, expected = actual[finite], expected[finite]
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, msg: str = ""):
    """Scale-aware closeness: the largest deviation is at most ``rel`` times the tensor's largest
    magnitude.  Float32 summation order differs between CPU types (and worker splits), so a
    per-element tolerance on tiny elements fails at random; this does not, and still catches
    any real error that is not negligible next to the tensor itself."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = scaled_error(actual, expected)
    assert err <= rel, f"{msg}: max deviation {err:.3g} x max|expected| exceeds {rel:g}"


# Keys our criteria log beyond the official ones (docs/ARCHITECTURE.md, deliberate differences).
EXTRA_LOG_KEYS = {"ntokens", "num_skipped", "valid_boxes", "_acc_score", "_acc_cnt", "_top5_score", "_top5_cnt"}


def assert_logging_output(log: dict, want: dict, rel: float = 1e-5, abs_: float = 1e-5):
    """Every key of an official ``logging_output`` is in ours with the same value (losses to ``rel`` of
    their size, counts to ``abs_``), and ours has no key beyond them but :data:`EXTRA_LOG_KEYS`."""
    missing = set(want) - set(log)
    assert not missing, f"official logging_output keys missing: {sorted(missing)}"
    extra = set(log) - set(want) - EXTRA_LOG_KEYS
    assert not extra, f"logging_output keys the official does not have: {sorted(extra)}"
    for key, value in want.items():
        value = float(value)
        assert abs(float(log[key]) - value) <= max(abs_, rel * abs(value)), (key, float(log[key]), value)


def write_fixture_media(folder):
    """The parity fixture's raw images (PNG) and 16 kHz clips (float WAV) as files in ``folder``:
    (image paths, audio paths)."""
    import soundfile as sf
    from PIL import Image

    inputs = load_fixture("inputs.pt")
    images, audios = [], []
    for i, array in enumerate(inputs["raw_images_uint8_HWC"]):
        images.append(str(pathlib.Path(folder) / f"image{i}.png"))
        Image.fromarray(array.numpy()).save(images[-1])
    for i, wav in enumerate(inputs["raw_audios_16k_float32"]):
        audios.append(str(pathlib.Path(folder) / f"audio{i}.wav"))
        sf.write(audios[-1], wav.numpy(), 16000, subtype="FLOAT")
    return images, audios
