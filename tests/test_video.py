"""The video modality: registry entry, adapter geometry, the branch started from the image branch
(official-format checkpoints), masks, the pretraining path, and video I/O with its bad inputs."""
import json
import logging

import av
import numpy as np
import pytest
import torch
from helpers import load_fixture
from omegaconf import OmegaConf
from PIL import Image

from one_peace.data_utils.masking import preserve_ids_from_mask
from one_peace.data_utils.video import (
    load_video,
    sample_indices,
    tube_complementary_mask,
    tube_mask,
    video_to_tensor,
)
from one_peace.fairseq_glue.registration import freeze_all_but
from one_peace.models import OnePeacePretrainModel, OnePeaceRetrievalModel
from one_peace.models.adapters.video import make_video_bucket_position, video_bucket_count
from one_peace.models.architectures import preset_config
from one_peace.models.checkpoint import CheckpointMismatchError, load_into
from one_peace.models.config import EncoderConfig, OnePeacePretrainConfig
from one_peace.models.modalities import encoder_type_modalities, get_modality, modalities_of
from one_peace.models.relative_position import image_bucket_count, make_image_bucket_position


def write_clip(path, frames, codec="mpeg4", fps=8):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = {"gif": "rgb8", "png": "rgb24"}.get(codec, "yuv420p")
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def numbered_frames(n, size=32):
    """Frame i is uniformly grey at level 20 * i, so a decoded frame tells its index."""
    return [np.full((size, size, 3), 20 * i, dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def official_model_cfg(fixtures_dir):
    """The fixture's (official-format) retrieval config plus a video adapter of the image geometry."""
    cfg = OmegaConf.create(json.loads((fixtures_dir / "config.json").read_text())["retrieval_cfg"]["model"])
    image = cfg.encoder.image_adapter
    cfg.encoder.video_adapter = {"num_frames": 4, "bucket_size": image.bucket_size,
                                 "rel_bucket_size": image.rel_bucket_size, "use_attn_bias": True,
                                 "vision_encoder_type": "hmlp", "layernorm_embedding": False,
                                 "add_type_embedding": False, "shrink_alpha": 1.0, "dropout": 0.0,
                                 "image_init_checkpoint": None}
    return cfg


def test_registered_as_a_fourth_modality_off_by_default():
    spec = get_modality("video")
    assert spec.input_keys == ("src_videos",) and not spec.official and spec.upgrade is not None
    assert encoder_type_modalities("vt") == ("text", "video")
    assert modalities_of("val") == ("text", "image", "audio")  # official checkpoints build no video branch
    assert not EncoderConfig().use_video_moe and EncoderConfig().use_image_moe


def test_one_frame_bucket_map_is_the_image_map():
    for size in (2, 4):
        assert torch.equal(make_video_bucket_position(1, size), make_image_bucket_position(size))
        assert video_bucket_count(1, size) == image_bucket_count(size)
    bucket = make_video_bucket_position(3, 2)
    # time offsets get their own buckets: same cell, frames 0->1 and 0->2 differ; 0->1 and 1->2 agree
    assert bucket[1, 5] != bucket[1, 9] and bucket[1, 5] == bucket[5, 9]
    assert int(bucket.max()) == video_bucket_count(3, 2) - 1


def test_official_checkpoint_starts_the_video_branch_from_the_image_branch(official_model_cfg, caplog):
    state = load_fixture("pretrain_state_dict.pt")
    before = {k: v.clone() for k, v in state.items()}
    model = OnePeaceRetrievalModel(official_model_cfg, head_type="text+image+video", vocab_size=256).eval()
    with caplog.at_level(logging.WARNING):
        load_into(model, state)
    assert "video branch initialised from the checkpoint's image branch" in caplog.text
    # the checkpoint's keys and tensors are untouched; the video weights are copies of the image ones
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    layer = model.encoder_wrapper.fusion_model.layers[0]
    assert torch.equal(layer.video_ffn[0].wi_0.weight, layer.image_ffn[0].wi_0.weight)
    assert torch.equal(model.video_proj.weight, model.image_proj.weight)
    assert not model.encoder_wrapper.video_adapter.temporal_embed.any()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_emb = model.encode("image", src_images=images)
        # one frame is exactly the image; a still clip (the frame repeated) is close to it (its patches
        # take T times the attention weight the CLS key keeps, docs/VIDEO.md)
        torch.testing.assert_close(model.encode("video", src_videos=images[:, None]), image_emb, rtol=0, atol=1e-6)
        still = model.encode("video", src_videos=images[:, None].expand(-1, 4, -1, -1, -1))
    assert (still * image_emb).sum(-1).min() > 0.85
    # the same checkpoint into a model without video: nothing video in it, official keys only
    plain = load_into(OnePeaceRetrievalModel(official_model_cfg, head_type="val", vocab_size=256), state)
    assert not any("video" in k for k in plain.state_dict())


def test_video_keys_of_a_video_checkpoint_follow_the_ordinary_rules(official_model_cfg):
    model = OnePeaceRetrievalModel(official_model_cfg, head_type="vt", vocab_size=256)
    state = dict(model.state_dict())
    state.pop("encoder_wrapper.fusion_model.layers.1.video_ffn.3.weight")
    with pytest.raises(CheckpointMismatchError, match="video_ffn"):
        load_into(OnePeaceRetrievalModel(official_model_cfg, head_type="vt", vocab_size=256), state)


def tiny_video_pretrain_cfg():
    cfg = preset_config(OnePeacePretrainConfig, "tiny")
    for part in (cfg.encoder, cfg.decoder):
        part.use_image_moe = part.use_audio_moe = False
        part.use_video_moe = True
        part.video_adapter.num_frames = 4
    cfg.encoder.use_layer_scale = False  # (the preset's 1e-6 layer scale leaves CLS its embedding)
    return cfg


def test_motion_changes_the_embedding_and_the_student_path_trains_the_video_branch():
    torch.manual_seed(0)
    model = OnePeacePretrainModel(tiny_video_pretrain_cfg(), vocab_size=256)
    with torch.no_grad():
        model.encoder_wrapper.video_adapter.temporal_embed.normal_(0, 0.5)
    clip = torch.randn(2, 4, 3, 32, 32)
    forward, _ = model(src_videos=clip, encoder_type="video")
    backward, _ = model(src_videos=clip.flip(1), encoder_type="video")
    assert (forward - backward).abs().max() > 1e-3  # frame order matters (a frame average would not see it)
    freeze_all_but(model, "video")
    mask = tube_mask(4, 4, 0.5, rng=0)
    preserve = preserve_ids_from_mask(mask)[None].expand(2, -1)
    out = model(src_videos=clip, video_preserve_ids=preserve, encoder_type="video")
    assert out.shape == (2, 17, 64)
    tokens = torch.randint(4, 200, (2, 5))
    text_out, video_out = model(src_tokens=tokens, src_videos=clip, text_preserve_ids=torch.tensor([[0, 1, 3]] * 2),
                                video_preserve_ids=preserve, encoder_type="vt")
    (out.sum() + video_out.sum() + text_out.sum()).backward()
    wrapper = model.encoder_wrapper
    assert wrapper.video_adapter.embed_images[0].weight.grad.abs().sum() > 0
    assert wrapper.fusion_model.layers[0].video_ffn[0].wi_0.weight.grad.abs().sum() > 0
    assert wrapper.fusion_model.layers[0].self_attn.q_proj.weight.grad is None  # shared attention frozen
    assert wrapper.text_adapter.embed_tokens.weight.grad is None


def test_tube_masks():
    mask = tube_mask(3, 4, 0.5, rng=1)
    assert mask.shape == (13,) and not mask[0] and int(mask.sum()) == 6
    cells = mask[1:].view(3, 4)
    assert torch.equal(cells[0], cells[1]) and torch.equal(cells[0], cells[2])  # the same cells in every frame
    fused = tube_complementary_mask(mask, 3, 0.5, rng=2)
    fused_cells = fused[1:].view(3, 4)
    assert torch.equal(fused_cells[0], fused_cells[2]) and torch.equal(fused_cells[0], ~cells[0])


def test_uniform_sampling_from_files_and_folders(tmp_path):
    assert sample_indices(16, 4) == [2, 6, 10, 14] and sample_indices(2, 4) == [0, 0, 1, 1]
    for codec, name in (("mpeg4", "clip.mp4"), ("libvpx", "clip.webm"), ("mpeg4", "clip.avi"), ("gif", "clip.gif")):
        write_clip(tmp_path / name, numbered_frames(12), codec=codec)
        frames = load_video(str(tmp_path / name), 4)
        levels = [int(np.asarray(f).mean() / 20 + 0.5) for f in frames]
        assert levels == sample_indices(12, 4), (name, levels)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(numbered_frames(10)):
        Image.fromarray(frame).save(folder / f"f{i}.png")  # f10 after f9: numbers compare as numbers
    levels = [int(np.asarray(f).mean() / 20 + 0.5) for f in load_video(str(folder), 5)]
    assert levels == sample_indices(10, 5)
    tensor = video_to_tensor(load_video(str(folder), 5), 32)
    assert tensor.shape == (5, 3, 32, 32) and tensor.dtype == torch.float32


def test_bad_videos_are_errors_naming_the_file(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(str(missing), 4)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4.*empty"):
        load_video(str(empty), 4)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(ValueError, match="cannot read video .*notes.mp4"):
        load_video(str(text), 4)
    import soundfile as sf

    sf.write(tmp_path / "sound.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="sound.wav: the file has no video stream"):
        load_video(str(tmp_path / "sound.wav"), 4)
    truncated = tmp_path / "truncated.mp4"
    write_clip(tmp_path / "whole.mp4", numbered_frames(8))
    truncated.write_bytes((tmp_path / "whole.mp4").read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.mp4"):
        load_video(str(truncated), 4)
    (tmp_path / "no_frames").mkdir()
    with pytest.raises(ValueError, match="no_frames holds no frame images"):
        load_video(str(tmp_path / "no_frames"), 4)
    huge = tmp_path / "huge"
    huge.mkdir()
    Image.new("RGB", (9000, 4)).save(huge / "0.png")
    with pytest.raises(ValueError, match="0.png: frames of 9000x4 pixels"):
        load_video(str(huge), 4)
    write_clip(tmp_path / "wide.avi", [np.zeros((16, 8200, 3), dtype=np.uint8)] * 2, codec="png")
    with pytest.raises(ValueError, match="wide.avi: frames of 8200x16 pixels"):
        load_video(str(tmp_path / "wide.avi"), 4)
