"""Video end to end on generated MSR-VTT-layout data: converter -> zero-shot retrieval through
one-peace-evaluate (the run script) from an official-format checkpoint without video weights, the hub
on the same checkpoint, and bad clips skipped and counted in training."""
import json
import logging

import numpy as np
import pytest
import torch
from e2e_helpers import REPO, read_results, run, run_script_module
from helpers import BPE_ASSETS

from one_peace.data_utils import synthetic_video
from one_peace.data_utils.dataset import BadSampleError
from one_peace.data_utils.tsv import TSVReader
from one_peace.data_utils.video_datasets import VideoTextPretrainDataset

CLASSES = [("red", "circle", "moving left"), ("blue", "triangle", "growing"), ("green", "circle", "moving up"),
           ("yellow", "triangle", "rotating"), ("red", "triangle", "shrinking")]


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt")
    (root / "videos").mkdir()
    rng = np.random.default_rng(0)
    videos, sentences = [], []
    for i, cls in enumerate(CLASSES):
        synthetic_video.write_clip(str(root / "videos" / f"video{i}.mp4"), synthetic_video.render_clip(*cls, rng,
                                                                                                     size=32))
        videos.append({"video_id": f"video{i}", "split": "test" if i >= 2 else "train"})
        sentences += [{"video_id": f"video{i}", "caption": synthetic_video.video_caption(*cls)},
                      {"video_id": f"video{i}", "caption": f"clip\tnumber {i}\n"}]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    out = root / "tsv"
    run_script_module("video_text_retrieval/convert_msrvtt.py").main(
        ["--data-json", str(root / "MSRVTT_data.json"), "--video-dir", str(root / "videos"), "--out-dir", str(out)])
    return root, out


def test_converter_layout(msrvtt):
    root, out = msrvtt
    train = (out / "msrvtt_train.tsv").read_text().splitlines()
    test = (out / "msrvtt_test.tsv").read_text().splitlines()
    assert train[0] == "uniq_id\tvideo\ttext" and len(train) == 1 + 4  # 2 clips x 2 captions
    assert [line.split("\t")[0] for line in test[1:]] == ["video2", "video3", "video4"]
    texts = json.loads((out / "msrvtt_test_texts.json").read_text())
    assert texts["video3"] == ["a yellow triangle rotating", "clip number 3"]  # tabs and newlines cleaned
    (root / "videos" / "video4.mp4").rename(root / "video4.mp4")
    try:
        with pytest.raises(FileNotFoundError, match="video4.mp4"):
            run_script_module("video_text_retrieval/convert_msrvtt.py").main(
                ["--data-json", str(root / "MSRVTT_data.json"), "--video-dir", str(root / "videos"),
                 "--out-dir", str(root / "other")])
    finally:
        (root / "video4.mp4").rename(root / "videos" / "video4.mp4")


def test_zero_shot_retrieval_from_a_checkpoint_without_video(msrvtt, tmp_path, fixture_bpe_dir):
    from test_evaluate import write_retrieval_checkpoint

    _, out = msrvtt
    checkpoint = write_retrieval_checkpoint(tmp_path / "pretrained.pt")
    results = tmp_path / "zero_shot"
    log = run(["bash", str(REPO / "run_scripts/video_text_retrieval/zero_shot_evaluate.sh"), "--cpu",
               "--patch-image-size", "32", "--num-frames", "4"],
              dict(VIDEO_DIR=str(out), ONE_PEACE_CHECKPOINT=str(checkpoint), RESULTS_DIR=str(results),
                   BPE_DIR=fixture_bpe_dir), tmp_path)
    assert "video branch initialised from the checkpoint's image branch" in log
    preds, metrics = read_results(results, "msrvtt_test")
    assert metrics["txt_count"] == 6 and metrics["vid_count"] == 3  # 6 captions, 3 clips
    for key in ("txt_r1", "txt_r5", "txt_r10", "vid_r1", "vid_r5", "vid_r10", "r_mean"):
        assert 0 <= metrics[key] <= 100, key
    assert metrics["txt_r10"] == 100.0 and metrics["vid_r10"] == 100.0  # everything is within the top 10
    assert [p["uniq_id"] for p in preds] == ["video2", "video3", "video4"]


def test_hub_embeds_video_from_an_official_format_checkpoint(msrvtt, tmp_path, fixture_bpe_dir):
    from test_evaluate import write_retrieval_checkpoint

    from one_peace import from_pretrained

    root, _ = msrvtt
    checkpoint = write_retrieval_checkpoint(tmp_path / "pretrained.pt")
    hub = from_pretrained(str(checkpoint), device="cpu", bpe_dir=fixture_bpe_dir, modalities=("text", "video"))
    assert hub.model.modalities == ("text", "video")
    clips = [str(root / "videos" / f"video{i}.mp4") for i in range(3)]
    net_input = hub.process_video(clips)
    assert net_input["src_videos"].shape == (3, 8, 3, 32, 32)
    videos = hub.extract_video_features(**net_input)
    text = hub.extract_text_features(hub.process_text(["a red circle moving left", "a blue triangle"]))
    assert videos.shape == (3, text.size(1)) and torch.allclose(videos.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="cannot read video .*notes.mp4"):
        (tmp_path / "notes.mp4").write_text("not a video")
        hub.process_video([str(tmp_path / "notes.mp4")])
    # the default still builds what the checkpoint has: no video branch
    assert "video" not in from_pretrained(str(checkpoint), device="cpu", bpe_dir=fixture_bpe_dir).model.modalities


def test_bad_clips_are_skipped_and_counted_in_training(msrvtt, tmp_path, caplog):
    from one_peace.data_utils.bpe import TextTokenizer

    root, _ = msrvtt
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("uniq_id\tvideo\ttext\n"
                   f"a\t{root / 'videos' / 'video0.mp4'}\ta red circle moving left\n"
                   f"b\t{tmp_path / 'broken.mp4'}\ta clip\n"
                   f"c\t{tmp_path / 'absent.mp4'}\ta clip\n")
    tokenizer = TextTokenizer(str(BPE_ASSETS))
    reader = TSVReader(str(tsv), selected_cols="uniq_id,video,text")
    dataset = VideoTextPretrainDataset("train", reader, tokenizer, patch_image_size=32, num_frames=4)
    with caplog.at_level(logging.WARNING):
        batch = dataset.collater([dataset[i] for i in range(3)])
    assert batch["num_skipped"] == 2 and batch["net_input"]["src_videos"].shape == (1, 4, 3, 32, 32)
    assert "broken.mp4" in caplog.text and "absent.mp4" in caplog.text and "row 3" in caplog.text
    assert batch["net_input"]["video_preserve_ids"].shape[1] == 1 + 4 * 1  # 25 % of 4 cells kept, all frames
    strict = VideoTextPretrainDataset("valid", reader, tokenizer, patch_image_size=32, num_frames=4,
                                      skip_bad_samples=False)
    with pytest.raises(BadSampleError, match="broken.mp4"):
        strict[1]
