"""Hub interface: official names/behaviour, parity with the official hub, bad input."""

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FIXTURES, assert_scaled_close, load_fixture, write_fixture_media
from PIL import Image

from one_peace import from_pretrained


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    return write_fixture_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def hub(retrieval_checkpoint, fixture_bpe_dir):
    return from_pretrained(retrieval_checkpoint, model_type="one_peace_retrieval", device="cpu",
                           dtype="float32", bpe_dir=fixture_bpe_dir)


@pytest.fixture(scope="module")
def official_hub(retrieval_checkpoint, fixture_bpe_dir):
    """The official hub's batching: one padded forward per batch of clips."""
    return from_pretrained(retrieval_checkpoint, model_type="one_peace_retrieval", device="cpu",
                           dtype="float32", bpe_dir=fixture_bpe_dir, official_padding=True)


def test_hub_matches_official_hub(official_hub, media_files):
    hub = official_hub
    ref = load_fixture("retrieval_hub.pt")
    inputs = load_fixture("inputs.pt")
    images, audios = media_files
    tokens = hub.process_text(inputs["captions"])
    assert torch.equal(tokens, ref["hub_src_tokens"])
    src_images = hub.process_image(images)
    assert_scaled_close(src_images, inputs['src_images'], rel=1e-06)
    src_audios, masks = hub.process_audio(audios)
    assert_scaled_close(src_audios, inputs['src_audios'], rel=1e-06)
    assert torch.equal(masks, inputs["audio_padding_masks"])
    assert_scaled_close(hub.extract_text_features(tokens), ref['text_embeddings'], rel=1e-05)
    assert_scaled_close(hub.extract_image_features(src_images), ref['image_embeddings'], rel=1e-05)
    assert_scaled_close(hub.extract_audio_features(src_audios, masks), ref['audio_embeddings'], rel=1e-05)
    with torch.no_grad():
        assert_scaled_close(hub.model(return_logit_scale=True), ref['logit_scale_exp'], rel=1e-05)


def test_a_clip_embeds_as_it_does_alone(hub, official_hub, media_files):
    """In one batch, clips of unequal length each get the embedding they get alone (the indexer embeds
    in batches and searches with single files); the official batching would not give that."""
    _, audios = media_files
    src_audios, masks = hub.process_audio(audios)
    assert len(set((~masks).sum(1).tolist())) > 1, "the fixture clips must differ in length"
    batched = hub.extract_audio_features(src_audios, masks)
    for i, path in enumerate(audios):
        alone = hub.extract_audio_features(*hub.process_audio([path]))
        assert (batched[i] - alone[0]).abs().max() <= 1e-5
    official = official_hub.extract_audio_features(src_audios, masks)
    assert (official - batched).abs().max() > 1e-3  # the official batching does depend on the batch


def test_image_sizes_and_any_pil_mode(hub, tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 24), (10, 200, 30, 128)).save(rgba)
    grey = tmp_path / "grey.png"
    Image.new("L", (20, 20), 99).save(grey)
    images, widths, heights = hub.process_image([str(rgba), str(grey)], return_image_sizes=True)
    assert images.shape == (2, 3, 32, 32)
    assert widths.tolist() == [40, 20] and heights.tolist() == [24, 20]


def test_audio_any_rate_and_channels(hub, tmp_path):
    t = np.arange(int(44100 * 1.5)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    path = tmp_path / "stereo44k.flac"
    sf.write(path, stereo, 44100)
    audios, masks = hub.process_audio([str(path)])
    assert audios.shape == (1, 24000)  # 1.5 s at 16 kHz, mono
    assert masks.shape == (1, 75)
    assert hub.extract_audio_features(audios, masks).shape == (1, 64)


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_embeds_every_modality_as_float32_does(retrieval_checkpoint, fixture_bpe_dir, hub, media_files,
                                                              dtype, torch_dtype):
    """fp16 is what a GPU user picks first; the dtype paths (token ids kept integer, float inputs and
    padding masks cast, attention biases in the computing dtype) run here on the CPU."""
    half = from_pretrained(retrieval_checkpoint, device="cpu", dtype=dtype, bpe_dir=fixture_bpe_dir)
    images, audios = media_files
    tokens = half.process_text(["a dog on the street"])
    assert tokens.dtype == torch.int64
    for name, inputs in (("text", (tokens,)), ("image", (half.process_image(images),)),
                         ("audio", half.process_audio(audios))):
        emb = getattr(half, f"extract_{name}_features")(*inputs)
        assert emb.dtype == torch_dtype and torch.isfinite(emb.float()).all(), name
        ref = getattr(hub, f"extract_{name}_features")(*inputs)
        assert (emb.float() - ref).abs().max() < 0.05, (name, (emb.float() - ref).abs().max())


def test_bad_inputs_name_the_input(hub, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        hub.process_text(["a caption", "   "])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        hub.process_image([str(tmp_path / "nope.png")])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        hub.process_image([str(corrupt)])
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        hub.process_audio([str(tmp_path / "missing.wav")])
    bad_audio = tmp_path / "bad.flac"
    bad_audio.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="bad.flac"):
        hub.process_audio([str(bad_audio)])
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav"):
        hub.process_audio([str(empty)])


def test_degenerate_inputs_get_an_error_naming_the_argument_or_a_correct_result(hub, tmp_path):
    for method, name in ((hub.process_text, "texts"), (hub.process_image, "image_paths"),
                         (hub.process_audio, "audio_paths")):
        with pytest.raises(ValueError, match=f"{name} is empty"):
            method([])
    with pytest.raises(ValueError, match=r"texts\[1\]: .*not encodable"):
        hub.process_text(["fine", "bad \ud800 surrogate"])
    with pytest.raises(TypeError, match=r"texts\[0\]: text must be a str"):
        hub.process_text([None])
    with pytest.raises(TypeError, match=r"image_paths\[0\] must be a file path or a PIL image"):
        hub.process_image([3])
    nan_clip = tmp_path / "nan.wav"
    samples = np.zeros(16000, dtype=np.float32)
    samples[5] = np.nan
    sf.write(nan_clip, samples, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav contains NaN"):
        hub.process_audio([str(nan_clip)])
    # silent, tiny and one-pixel inputs are valid: finite, normalised embeddings
    silent, tiny, pixel = tmp_path / "silent.wav", tmp_path / "tiny.wav", tmp_path / "pixel.png"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    sf.write(tiny, np.full(10, 0.1, dtype=np.float32), 16000)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(pixel)
    audio = hub.extract_audio_features(*hub.process_audio([str(silent), str(tiny)]))
    image = hub.extract_image_features(hub.process_image(str(pixel)))
    for emb in (audio, image):
        assert torch.isfinite(emb).all()
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.size(0)))


def test_classify_checkpoints_through_hub(fixture_bpe_dir):
    inputs = load_fixture("inputs.pt")
    audio_ref = load_fixture("classify_audio.pt")
    hub = from_pretrained(str(FIXTURES / "classify_audio_checkpoint.pt"), model_type="one_peace_classify",
                          device="cpu", bpe_dir=fixture_bpe_dir, official_padding=True)
    logits = hub.extract_audio_features(inputs["src_audios"], inputs["audio_padding_masks"])
    assert_scaled_close(logits, audio_ref['logits'], rel=1e-05)
    vl_ref = load_fixture("classify_vl.pt")
    hub = from_pretrained(str(FIXTURES / "classify_vl_checkpoint.pt"), model_type="one_peace_classify",
                          device="cpu", bpe_dir=fixture_bpe_dir)
    logits = hub.extract_vl_features(inputs["src_images"], inputs["src_tokens"])
    assert_scaled_close(logits, vl_ref['logits'], rel=1e-05)


def test_readme_embedding_example_runs_as_written(retrieval_checkpoint, fixture_bpe_dir, media_dir, tmp_path,
                                                  monkeypatch):
    """The README's python block, verbatim, with one-peace.pt = the fixture's tri-modal retrieval model."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### Embeddings and retrieval.*?```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "one-peace.pt").symlink_to(retrieval_checkpoint)
    for name in ("dog.JPEG", "elephant.JPEG", "dog.flac", "cow.flac"):
        (tmp_path / name).symlink_to(media_dir / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONE_PEACE_BPE_DIR", fixture_bpe_dir)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["text"].shape == (2, 64) and namespace["image"].shape == (2, 64)
    assert namespace["audio"].shape == (2, 64)
