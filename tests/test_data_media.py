"""Image and audio preprocessing: fixture parity, format handling, bad inputs, collation."""
import math
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from one_peace.data_utils.audio import (
    OFFICIAL_FEATURE_ENCODER_SPEC,
    audio_padding_mask,
    conv_output_frames,
    load_audio,
    parse_feature_encoder_spec,
    prepare_waveform,
    receptive_field,
)
from one_peace.data_utils.collate import collate_audios, collate_bool, collate_ids, collate_tokens
from one_peace.data_utils.image import (
    CLIP_MEAN,
    CLIP_STD,
    ImageTransform,
    image_to_tensor,
    load_image,
    normalize,
    random_resized_crop,
    random_resized_crop_params,
    to_tensor,
)


def _shared_dir() -> pathlib.Path:
    env = os.environ.get("ONE_PEACE_SHARED")
    for cand in (pathlib.Path(__file__).resolve().parents[1].parent / "shared", env and pathlib.Path(env)):
        if cand and cand.is_dir():
            return cand
    raise RuntimeError("shared assets not found: expected ../shared next to the repository "
                       "or $ONE_PEACE_SHARED")


SHARED = _shared_dir()
MEDIA = SHARED / "assets" / "media"
TINY_SPEC = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]"


@pytest.fixture(scope="module")
def inputs():
    return torch.load(SHARED / "fixtures" / "official-parity" / "inputs.pt", weights_only=True)


# ---- images ---------------------------------------------------------------------------------
def test_image_fixture_parity(inputs):
    images = [Image.fromarray(a.numpy()) for a in inputs["raw_images_uint8_HWC"]]
    ours = torch.stack([image_to_tensor(img, 32) for img in images])
    assert ours.dtype == torch.float32
    assert torch.equal(ours, inputs["src_images"])
    assert torch.equal(torch.stack([ImageTransform(32)(img) for img in images]), inputs["src_images"])


def test_image_fixture_parity_through_png_files(inputs, tmp_path):
    for i, arr in enumerate(inputs["raw_images_uint8_HWC"]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(arr.numpy()).save(path)
        assert torch.equal(image_to_tensor(load_image(str(path)), 32), inputs["src_images"][i])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA", "I;16"])
def test_load_image_converts_modes(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")
    ext = "jpg" if mode == "CMYK" else ("tiff" if mode == "I;16" else "png")
    path = tmp_path / f"img.{ext}"
    img.save(path)
    out = load_image(str(path))
    assert out.mode == "RGB" and out.size == (30, 20)
    assert image_to_tensor(out, 16).shape == (3, 16, 16)


def _grey_ramp():
    return (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode,suffix", [("I;16", "png"), ("I;16", "tiff"), ("I", "tiff"), ("F01", "tiff"),
                                         ("F255", "tiff"), ("I;16B", "tiff")])
def test_high_bit_depth_images_match_their_8_bit_picture(tmp_path, mode, suffix):
    """A 16-bit / 32-bit / float greyscale picture gives the same pixels as its 8-bit version
    (PIL's convert('RGB') clips such images to white)."""
    grey = _grey_ramp()
    if mode.startswith("I;16"):
        img = Image.fromarray(grey.astype(np.uint16) * 257)
        if mode == "I;16B":
            img = Image.frombytes("I;16B", img.size, (grey.astype(">u2") * 257).tobytes())
    elif mode == "I":
        img = Image.fromarray(grey.astype(np.int32) * 257, mode="I")
    else:
        img = Image.fromarray(grey.astype(np.float32) / (255.0 if mode == "F01" else 1.0), mode="F")
    path = tmp_path / f"img.{suffix}"
    img.save(path)
    eight_bit = tmp_path / "img8.png"
    Image.fromarray(grey).save(eight_bit)
    ours = np.asarray(load_image(str(path)), dtype=np.int16)
    assert np.abs(ours - np.asarray(load_image(str(eight_bit)), dtype=np.int16)).max() <= 1


def test_ambiguous_or_non_finite_wide_images_are_refused(tmp_path):
    wide = tmp_path / "wide.tiff"
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32), mode="I").save(wide)
    with pytest.raises(ValueError, match="wide.tiff.*do not map to 8 bits"):
        load_image(str(wide))
    nan = tmp_path / "nan.tiff"
    values = np.zeros((4, 4), dtype=np.float32)
    values[1, 1] = np.nan
    Image.fromarray(values, mode="F").save(nan)
    with pytest.raises(ValueError, match="nan.tiff.*NaN"):
        load_image(str(nan))


def test_load_shared_jpegs():
    for name in ["dog.JPEG", "pokemons.jpg"]:
        img = load_image(str(MEDIA / name))
        x = image_to_tensor(img, 64)
        assert img.mode == "RGB" and x.shape == (3, 64, 64) and torch.isfinite(x).all()


def test_bad_images(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(str(missing))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match="garbage.jpg"):
        load_image(str(garbage))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((MEDIA / "dog.JPEG").read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.jpg"):
        load_image(str(truncated))


def test_normalisation_constants():
    white = Image.new("RGB", (4, 4), (255, 255, 255))
    x = image_to_tensor(white, 4)
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x[:, 0, 0], expected)


def test_random_resized_crop_params():
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        top, left, h, w = random_resized_crop_params(200, 180, scale=(0.9, 1.0), rng=g)
        assert 0 <= top and top + h <= 180 and 0 <= left and left + w <= 200
        assert 0.88 * 36000 <= h * w <= 36000  # area fraction in [0.9, 1] up to rounding
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # determinism with both generator kinds
    a = random_resized_crop_params(300, 200, rng=torch.Generator().manual_seed(1))
    assert a == random_resized_crop_params(300, 200, rng=torch.Generator().manual_seed(1))
    b = random_resized_crop_params(300, 200, rng=np.random.default_rng(1))
    assert b == random_resized_crop_params(300, 200, rng=np.random.default_rng(1))
    # 200x100 cannot hold 90% of its area at aspect <= 4/3: fallback central crop (100 x 133)
    assert random_resized_crop_params(200, 100, rng=np.random.default_rng(0)) == (0, 33, 100, 133)
    # impossible aspect (very wide image, scale 1) -> central crop clamped to max ratio
    assert random_resized_crop_params(1000, 10, scale=(1.0, 1.0), rng=np.random.default_rng(0)) == (0, 493, 10, 13)


def test_random_resized_crop_and_train_transform():
    img = load_image(str(MEDIA / "elephant.JPEG"))
    crop = random_resized_crop(img, 48, rng=np.random.default_rng(0))
    assert crop.size == (48, 48)
    t = ImageTransform(48, train=True, min_scale=0.9)
    x1 = t(img, rng=torch.Generator().manual_seed(5))
    x2 = t(img, rng=torch.Generator().manual_seed(5))
    assert x1.shape == (3, 48, 48) and torch.equal(x1, x2)
    # the training path's in-place conversion gives exactly ToTensor -> Normalize of the same crop
    crop = random_resized_crop(img, 48, scale=(0.9, 1.0), rng=torch.Generator().manual_seed(5))
    assert x1.is_contiguous() and torch.equal(x1, normalize(to_tensor(crop)))
    assert torch.equal(t(img.convert("L"), rng=torch.Generator().manual_seed(5)),
                       normalize(to_tensor(random_resized_crop(img.convert("L"), 48, scale=(0.9, 1.0),
                                                               rng=torch.Generator().manual_seed(5)))))
    with pytest.raises(ValueError):
        ImageTransform(48, train=True, min_scale=0.0)


# ---- audio ----------------------------------------------------------------------------------
def test_audio_fixture_parity(inputs):
    spec = parse_feature_encoder_spec(TINY_SPEC)
    waves = [prepare_waveform(w.numpy()) for w in inputs["raw_audios_16k_float32"]]
    frames = [conv_output_frames(w.numel(), spec) for w in waves]
    assert frames == [74, 49, 62]
    src, masks = collate_audios(waves, [audio_padding_mask(t) for t in frames])
    assert torch.equal(src, inputs["src_audios"])
    assert torch.equal(masks, inputs["audio_padding_masks"])


def test_audio_fixture_parity_through_wav_files(inputs, tmp_path):
    for i, w in enumerate(inputs["raw_audios_16k_float32"]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, w.numpy(), 16000, subtype="FLOAT")
        wav = prepare_waveform(load_audio(str(path), strict_sample_rate=True))
        assert torch.equal(wav, inputs["src_audios"][i, : wav.numel()])


def test_parse_feature_encoder_spec():
    assert parse_feature_encoder_spec(OFFICIAL_FEATURE_ENCODER_SPEC) == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    assert parse_feature_encoder_spec("[(1, 2, 3)] * 2 + 2 * [(4, 5, 6)]") == [(1, 2, 3)] * 2 + [(4, 5, 6)] * 2
    for bad in ["__import__('os').system('true')", "[(512, 10, 5)] * x", "[(1.5, 2, 3)]", "[(1, 2)]",
                "[(1, 2, 3)] - [(1, 2, 3)]", "", "[]", "[(1,2,3)] * 10**9", "[(1,2,3)] + 1", "(1, 2, 3)"]:
        with pytest.raises(ValueError, match="feature_encoder_spec"):
            parse_feature_encoder_spec(bad)


def test_conv_output_frames():
    spec = parse_feature_encoder_spec(OFFICIAL_FEATURE_ENCODER_SPEC)
    assert conv_output_frames(16000, spec) == 49
    assert conv_output_frames(16000 * 15, OFFICIAL_FEATURE_ENCODER_SPEC) == 749
    assert receptive_field(spec) == 400 and conv_output_frames(400, spec) == 1
    with pytest.raises(ValueError, match="clip.wav.*receptive field"):
        conv_output_frames(399, spec, name="clip.wav")
    assert torch.equal(audio_padding_mask(5), torch.zeros(6, dtype=torch.bool))


def test_prepare_waveform_length_rules():
    rng = np.random.default_rng(0)
    long = rng.standard_normal(16000 * 20).astype(np.float32) * 3 + 1
    out = prepare_waveform(long, max_duration=15)
    assert out.numel() == 16000 * 15
    full = torch.nn.functional.layer_norm(torch.from_numpy(long), (long.size,))
    assert torch.equal(out, full[: 16000 * 15])  # normalised over the whole clip, then cut
    short = rng.standard_normal(7000).astype(np.float32)
    out = prepare_waveform(short)
    assert out.numel() == 16000
    norm = torch.nn.functional.layer_norm(torch.from_numpy(short), (7000,))
    assert torch.equal(out, norm.repeat(math.ceil(16000 / 7000))[:16000])
    assert prepare_waveform(rng.standard_normal(16000)).numel() == 16000
    with pytest.raises(ValueError):
        prepare_waveform(np.zeros(0, dtype=np.float32))


def test_resampling_stereo_44k(tmp_path):
    sr, seconds, freq = 44100, 1.5, 440.0
    t = np.arange(int(sr * seconds)) / sr
    left = 0.5 * np.sin(2 * np.pi * freq * t)
    right = 0.3 * np.sin(2 * np.pi * freq * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    wav = load_audio(str(path))
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.size == int(sr * seconds) * 160 // 441  # 66150 * 16000 / 44100 = 24000
    spectrum = np.abs(np.fft.rfft(wav))
    peak_hz = np.argmax(spectrum) * 16000 / wav.size
    assert abs(peak_hz - freq) < 1.0
    t16 = np.arange(wav.size) / 16000
    mid = slice(1000, -1000)  # away from the filter's edge transients
    np.testing.assert_allclose(wav[mid], 0.4 * np.sin(2 * np.pi * freq * t16)[mid], atol=2e-3)
    with pytest.raises(ValueError, match=r"stereo.wav.*44100"):
        load_audio(str(path), strict_sample_rate=True)


def test_load_shared_flac():
    wav = load_audio(str(MEDIA / "dog.flac"), strict_sample_rate=True)
    assert wav.dtype == np.float32 and wav.shape == (80000,)
    x = prepare_waveform(wav)
    assert conv_output_frames(x.numel(), OFFICIAL_FEATURE_ENCODER_SPEC) == 249


def test_bad_audio(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.flac"):
        load_audio(str(tmp_path / "missing.flac"))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    with pytest.raises(ValueError, match="corrupt.wav"):
        load_audio(str(corrupt))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav.*no samples"):
        load_audio(str(empty))
    for value, name in ((np.nan, "nan.wav"), (np.inf, "inf.wav")):
        samples = np.zeros(16000, dtype=np.float32)
        samples[100] = value
        sf.write(tmp_path / name, samples, 16000, subtype="FLOAT")
        with pytest.raises(ValueError, match=f"{name} contains NaN or infinite samples"):
            load_audio(str(tmp_path / name))


# ---- collation ------------------------------------------------------------------------------
def test_collate_helpers():
    toks = collate_tokens([torch.tensor([5, 6, 2]), torch.tensor([7, 2])], pad_idx=1)
    assert toks.tolist() == [[5, 6, 2], [7, 2, 1]] and toks.dtype == torch.long
    src, masks = collate_audios([torch.ones(4), torch.ones(2)], [torch.zeros(3, dtype=torch.bool),
                                                                  torch.zeros(2, dtype=torch.bool)])
    assert src.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert masks.tolist() == [[False, False, False], [False, False, True]]
    assert collate_ids([torch.tensor([0, 3]), torch.tensor([0])]).tolist() == [[0, 3], [0, -1]]
    b = collate_bool([torch.tensor([False, True]), torch.tensor([False])])
    assert b.dtype == torch.bool and b.tolist() == [[False, True], [False, False]]
    with pytest.raises(ValueError):
        collate_tokens([])
    with pytest.raises(ValueError):
        collate_audios([torch.ones(3)], [])
