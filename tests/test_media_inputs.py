"""Media inputs beyond the happy path (no downloads; `test_real_media.py` runs real files):
EXIF orientation (hub, datasets, annotations), unusual image modes and animations, and bad input
(directories, empty, truncated or undecodable files) -- each an error naming the file, skipped,
logged and counted in training datasets."""
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from PIL import Image

from one_peace.data_utils.audio import load_audio
from one_peace.data_utils.image import exif_orientation, load_image, orient_array, orient_box
from one_peace.data_utils.video import load_video

TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
INVERSE = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # orientation whose transpose undoes it
UPRIGHT_BOX = (3, 2, 9, 6)  # a red rectangle in the 16 x 10 upright picture


def upright_picture() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 120, (10, 16, 3), dtype=np.uint8)
    pixels[2:6, 3:9] = (255, 0, 0)
    return Image.fromarray(pixels)


def save_oriented(path, orientation: int, fmt: str = "PNG") -> Image.Image:
    """A file showing :func:`upright_picture` through its EXIF orientation; returns the stored pixels."""
    stored = upright_picture().transpose(TRANSPOSES[INVERSE[orientation]]) if orientation != 1 else upright_picture()
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    return stored


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_picture_upright(tmp_path, orientation):
    path = str(tmp_path / f"o{orientation}.png")
    stored = save_oriented(path, orientation)
    upright, applied = load_image(path, return_orientation=True)
    assert applied == orientation
    assert np.array_equal(np.asarray(upright), np.asarray(upright_picture()))
    raw, applied = load_image(path, exif_transpose=False, return_orientation=True)
    assert applied == 1 and np.array_equal(np.asarray(raw), np.asarray(stored))
    # A box / label map drawn on the stored pixels lands on the same content once turned.
    stored_box = Image.fromarray((np.asarray(stored)[..., 0] == 255).astype(np.uint8)).getbbox()
    assert tuple(orient_box(stored_box, orientation, *stored.size)) == UPRIGHT_BOX
    assert torch.equal(orient_box(torch.tensor(stored_box, dtype=torch.float64), orientation, *stored.size),
                       torch.tensor(UPRIGHT_BOX, dtype=torch.float64))
    label = np.asarray(stored)[..., 0].astype(np.int64)
    assert np.array_equal(orient_array(label, orientation), np.asarray(upright_picture())[..., 0])


def test_orientation_of_jpeg_exif_and_bad_tags(tmp_path):
    save_oriented(tmp_path / "o6.jpg", 6, "JPEG")
    assert load_image(str(tmp_path / "o6.jpg")).size == (16, 10)
    assert load_image(str(tmp_path / "o6.jpg"), exif_transpose=False).size == (10, 16)
    for value in (0, 9, 300):  # invalid orientations are ignored, as ImageOps.exif_transpose does
        img = upright_picture()
        exif = Image.Exif()
        exif[0x0112] = value
        img.save(tmp_path / "bad.png", exif=exif.tobytes())
        with Image.open(tmp_path / "bad.png") as opened:
            assert exif_orientation(opened) == 1
        assert np.array_equal(np.asarray(load_image(str(tmp_path / "bad.png"))), np.asarray(img))


@pytest.fixture(scope="module")
def grounding_hubs(fixture_bpe_dir):
    from helpers import TASK_FIXTURES

    from one_peace import from_pretrained

    return {flag: from_pretrained(str(TASK_FIXTURES / "ckpt_refcoco_imgfeat.pt"), model_type="one_peace_classify",
                                  device="cpu", bpe_dir=fixture_bpe_dir, exif_transpose=flag) for flag in (True, False)}


def test_hub_ground_and_sizes_in_the_upright_frame(tmp_path, grounding_hubs):
    """exif_transpose=True: boxes and sizes are those of the upright picture (the very pixels of a file
    without the tag); False: those of the stored pixels (the official hub)."""
    upright_path = str(tmp_path / "upright.png")
    upright_picture().save(upright_path)
    paths, stored_paths = [], []
    for orientation in (3, 6, 8):
        paths.append(str(tmp_path / f"o{orientation}.png"))
        stored_paths.append(str(tmp_path / f"stored{orientation}.png"))
        save_oriented(paths[-1], orientation).save(stored_paths[-1])
    texts = ["a red box"] * 3
    hub = grounding_hubs[True]
    assert hub.exif_transpose is True
    _, widths, heights = hub.process_image(paths, return_image_sizes=True)
    assert widths.tolist() == [16] * 3 and heights.tolist() == [10] * 3
    reference = hub.ground([upright_path] * 3, texts)
    torch.testing.assert_close(hub.ground(paths, texts), reference, rtol=0, atol=1e-4)
    raw = grounding_hubs[False]
    _, widths, heights = raw.process_image(paths, return_image_sizes=True)
    assert widths.tolist() == [16, 10, 10] and heights.tolist() == [10, 16, 16]
    torch.testing.assert_close(raw.ground(paths, texts), raw.ground(stored_paths, texts), rtol=0, atol=1e-4)
    # PIL images are used in their own frame whatever the switch.
    with Image.open(paths[1]) as opened:
        assert hub.process_image([opened], return_image_sizes=True)[1].tolist() == [10]


def _task(config_cls, task_cls, tmp_path, rows, bpe_dir, **cfg):
    (tmp_path / "data.tsv").write_text("\n".join(rows) + "\n")
    task = task_cls.setup_task(OmegaConf.structured(config_cls(bpe_dir=bpe_dir, data=str(tmp_path / "data.tsv"),
                                                                valid_data=str(tmp_path / "data.tsv"), **cfg)))
    return task


@pytest.mark.parametrize("exif_transpose", [True, False])
def test_refcoco_boxes_and_segmentation_labels_turn_with_the_image(tmp_path, fixture_bpe_dir, exif_transpose):
    from one_peace.tasks.vision_tasks.semantic_segmentation import (
        SemanticSegmentationConfig,
        SemanticSegmentationTask,
    )
    from one_peace.tasks.vl_tasks.refcoco import RefCOCOConfig, RefCOCOTask

    stored = save_oriented(tmp_path / "o6.png", 6)
    stored_box = Image.fromarray((np.asarray(stored)[..., 0] == 255).astype(np.uint8)).getbbox()
    box = ",".join(map(str, stored_box))
    task = _task(RefCOCOConfig, RefCOCOTask, tmp_path, ["uniq_id\timage\ttext\tregion_coord",
                                                       f"a\to6.png\ta red box\t{box}"], fixture_bpe_dir,
                 patch_image_size=32, exif_transpose=exif_transpose)
    task.load_dataset("valid")
    item = task.dataset("valid")[0]
    assert item["region_coord"].tolist() == list(UPRIGHT_BOX if exif_transpose else stored_box)
    Image.fromarray((np.asarray(stored)[..., 0] == 255).astype(np.uint8)).save(tmp_path / "o6_label.png")
    seg = _task(SemanticSegmentationConfig, SemanticSegmentationTask, tmp_path,
                ["image\tlabel_map", "o6.png\to6_label.png"], fixture_bpe_dir, patch_image_size=32,
                num_classes=2, reduce_zero_label=False, exif_transpose=exif_transpose)
    seg.load_dataset("valid")
    target = seg.dataset("valid")[0]["target"].numpy()
    expected = np.asarray(upright_picture() if exif_transpose else stored)[..., 0] == 255
    assert np.array_equal(target, expected.astype(np.int64))


def test_exif_transpose_is_a_task_option(user_dir):
    """`--exif-transpose false` (fairseq-train) and `task.exif_transpose: false` (yaml) set it."""
    from fairseq import options

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["x.tsv", "--user-dir", user_dir, "--task", "image_text_pretrain",
                                                "--arch", "one_peace_pretrain_tiny", "--exif-transpose", "false"])
    assert args.exif_transpose is False
    from one_peace.tasks.base_task import BaseTaskConfig

    assert OmegaConf.merge(OmegaConf.structured(BaseTaskConfig), {"exif_transpose": False}).exif_transpose is False
    assert BaseTaskConfig().exif_transpose is True


# ---- unusual image modes and animations ----------------------------------------------------------
def test_unusual_modes_give_sensible_rgb(tmp_path):
    rgb = np.asarray(upright_picture())
    palette = upright_picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p_trns.png", transparency=0)
    expected_p = np.asarray(palette.convert("RGB"))
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "p_trns.png"))), expected_p)
    grey = upright_picture().convert("L")
    Image.merge("LA", (grey, Image.new("L", grey.size, 7))).save(tmp_path / "la.png")
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "la.png"))), np.asarray(grey.convert("RGB")))
    upright_picture().convert("CMYK").save(tmp_path / "cmyk.tiff")
    assert np.abs(np.asarray(load_image(str(tmp_path / "cmyk.tiff")), dtype=int) - rgb).max() <= 1
    sixteen = (np.asarray(grey, dtype=np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "grey16.tiff")
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "grey16.tiff"))), np.asarray(grey.convert("RGB")))


@pytest.mark.parametrize("suffix", ["gif", "png", "webp"])
def test_animations_give_their_first_frame(tmp_path, suffix):
    frames = [Image.new("RGB", (12, 8), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(tmp_path / f"anim.{suffix}", save_all=True, append_images=frames[1:], duration=50, loop=0,
                   **({"lossless": True} if suffix == "webp" else {}))
    with Image.open(tmp_path / f"anim.{suffix}") as opened:
        assert getattr(opened, "n_frames", 1) == 3
    first = np.asarray(load_image(str(tmp_path / f"anim.{suffix}")), dtype=int)
    assert np.abs(first - (250, 0, 0)).max() <= 2


# ---- bad input: an error naming the file; in training skipped, logged and counted ------------------
def vorbis_tagged_wav(path):
    """A RIFF/WAVE whose fmt tag is Vorbis (0x674f, 'Og'): neither libsndfile nor FFmpeg decodes it."""
    data = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    fmt = struct.pack("<HHIIHH", 0x674F, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory):
    """{kind: [(file name, expected message), ...]} in one folder, plus one good file per kind."""
    root = tmp_path_factory.mktemp("bad_media")
    upright_picture().save(root / "good.png")
    png = (root / "good.png").read_bytes()
    sf.write(root / "good.wav", np.sin(np.arange(16000) / 5).astype(np.float32), 16000, subtype="PCM_16")
    wav = (root / "good.wav").read_bytes()
    sf.write(root / "good.flac", np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    sf.write(root / "good.ogg", np.sin(np.arange(32000) / 5).astype(np.float32), 16000)
    for name in ("image_dir", "audio_dir"):
        (root / name).mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "empty.wav").write_bytes(b"")
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (root / "truncated.flac").write_bytes((root / "good.flac").read_bytes()[:300])
    ogg = (root / "good.ogg").read_bytes()
    (root / "truncated.ogg").write_bytes(ogg[: len(ogg) * 3 // 4])
    vorbis_tagged_wav(root / "vorbis_tag.wav")
    (root / "text.mp4").write_bytes(b"not a video at all\n" * 50)
    (root / "empty_frames").mkdir()
    return root, {
        "image": [("image_dir", "is a directory, not a image file"), ("empty.png", "is empty"),
                  ("truncated.png", "cannot read image"), ("missing.png", "not found")],
        "audio": [("audio_dir", "is a directory, not a audio file"), ("empty.wav", "is empty"),
                  ("truncated.wav", "is truncated"), ("truncated.flac", "cannot read audio"),
                  ("truncated.ogg", "truncated|no samples"), ("vorbis_tag.wav", "libsndfile: .*; FFmpeg: .*")],
        "video": [("empty.mp4", "is empty"), ("text.mp4", "cannot read video"),
                  ("empty_frames", "video folder .* holds no frame images"), ("missing.mp4", "not found")],
    }


LOADERS = {"image": load_image, "audio": load_audio, "video": lambda path: load_video(path, 2)}


@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_bad_media_errors_name_the_file(bad_media, kind):
    root, cases = bad_media
    for name, message in cases[kind]:
        path = str(root / name)
        with pytest.raises((ValueError, OSError), match=message) as info:
            LOADERS[kind](path)
        assert path in str(info.value), f"{name}: {info.value}"
    assert load_audio(str(root / "good.ogg")).shape == (32000,) if kind == "audio" else True


@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_training_datasets_skip_log_and_count_bad_media(bad_media, kind, fixture_bpe_dir, caplog):
    from one_peace.tasks.pretrain_tasks.pretrain_task import (
        AudioTextPretrainConfig,
        AudioTextPretrainTask,
        ImageTextPretrainConfig,
        ImageTextPretrainTask,
    )
    from one_peace.tasks.pretrain_tasks.video_text_pretrain import VideoTextPretrainConfig, VideoTextPretrainTask

    root, cases = bad_media
    names = [name for name, _ in cases[kind]]
    if kind == "image":
        rows = ["image_id\timage\tcaption"] + [f"{i}\t{n}\ta red box" for i, n in enumerate(["good.png"] + names)]
        task = _task(ImageTextPretrainConfig, ImageTextPretrainTask, root, rows, fixture_bpe_dir, patch_image_size=32)
    elif kind == "audio":
        rows = ["uniq_id\taudio\ttext\tduration"] + [f"{i}\t{n}\ta tone\t1" for i, n in
                                                     enumerate(["good.wav"] + names)]
        task = _task(AudioTextPretrainConfig, AudioTextPretrainTask, root, rows, fixture_bpe_dir,
                     feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]")
    else:
        rows = ["uniq_id\tvideo\ttext"] + [f"{i}\t{n}\ta red box" for i, n in enumerate(["good.png"] + names)]
        task = _task(VideoTextPretrainConfig, VideoTextPretrainTask, root, rows, fixture_bpe_dir,
                     patch_image_size=32, num_frames=2)
    task.load_dataset("train")
    dataset = task.dataset("train")
    with caplog.at_level("WARNING"):
        items = [dataset[i] for i in range(len(dataset))]
    assert items[0] is not None and all(item is None for item in items[1:])
    assert dataset.num_skipped == len(names)
    for name in names:
        assert any(str(root / name) in record.getMessage() for record in caplog.records), name
    batch = dataset.collater(items)
    assert batch["num_skipped"] == len(names) and batch["nsentences"] == 1
