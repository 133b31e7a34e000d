"""``one_peace.evaluate`` against the official-parity fixtures, its zero-shot mode and its errors.

The fixture checkpoints are evaluated on TSVs whose rows are the fixtures' own clips /
images, written to disk, so the whole data path (files -> dataset -> batch -> model ->
predictions file) must reproduce the official logits and embeddings.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FIXTURES, load_fixture, scaled_error
from PIL import Image

VENV_BIN = Path(sys.executable).parent
TINY_SPEC = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]"


def write_fixture_clips(root: Path, labels=(0, 1, 2)):
    """The fixture's three clips as 16 kHz float WAVs + a vggsound-layout TSV."""
    inputs = load_fixture("inputs.pt")
    rows = ["uniq_id\taudio\ttext\tduration"]
    for k, wav in enumerate(inputs["raw_audios_16k_float32"]):
        sf.write(root / f"clip{k}.wav", wav.numpy(), 16000, subtype="FLOAT")
        rows.append(f"clip{k}\tclip{k}.wav\t{labels[k]}\t{wav.numel() / 16000}")
    (root / "clips.tsv").write_text("\n".join(rows) + "\n")
    return root / "clips.tsv"


def write_retrieval_checkpoint(path: Path):
    """The fixtures' retrieval model (head_type val) as a fairseq checkpoint."""
    cfg = json.loads((FIXTURES / "config.json").read_text())["retrieval_cfg"]
    weights = load_fixture("pretrain_state_dict.pt")
    keys = load_fixture("retrieval_hub.pt")["retrieval_state_dict_keys"]
    torch.save({"args": None, "cfg": cfg, "model": {k: weights[k] for k in keys if k in weights}}, path)
    return path


def evaluate(argv):
    from one_peace.evaluate import run_cli

    return run_cli([str(a) for a in argv])


def test_pretraining_checkpoint_is_refused_up_front_with_what_to_do(tmp_path, fixture_bpe_dir):
    cfg = json.loads((FIXTURES / "config.json").read_text())["pretrain_cfg_image_text"]
    path = tmp_path / "pretrain.pt"
    torch.save({"args": None, "cfg": cfg, "model": load_fixture("pretrain_state_dict.pt")}, path)
    tsv = write_fixture_clips(tmp_path)
    with pytest.raises(ValueError, match=r"'image_text_pretrain' cannot be evaluated.*--zero-shot --task"):
        evaluate(["--path", path, "--gen-subset", "valid", "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir,
                  "--cpu"])


def test_classify_audio_fixture_logits_through_console_script(tmp_path, fixture_bpe_dir):
    tsv = write_fixture_clips(tmp_path)
    cmd = [str(VENV_BIN / "one-peace-evaluate"), "--path", str(FIXTURES / "classify_audio_checkpoint.pt"),
           "--gen-subset", "valid", "--valid-data", str(tsv), "--bpe-dir", fixture_bpe_dir, "--batch-size", "3",
           "--cpu", "--results-path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"accuracy"' in proc.stdout  # the metrics line
    preds = json.loads((tmp_path / "out" / "valid_predict.json").read_text())
    logits = torch.tensor([p["logits"] for p in preds])
    expected = load_fixture("classify_audio.pt")["logits"]
    assert scaled_error(logits, expected) <= 1e-5, (logits - expected).abs().max()
    metrics = json.loads((tmp_path / "out" / "valid_metrics.json").read_text())
    targets = torch.tensor([0, 1, 2])
    assert metrics["accuracy"] == pytest.approx(100 * (expected.argmax(1) == targets).float().mean().item())


def test_vqa_fixture_logits_and_vqa_score(tmp_path, fixture_bpe_dir):
    inputs = load_fixture("inputs.pt")
    rows = ["uniq_id\timage\tquestion\trefs"]
    refs = ["yes|!+3|!+1.0&&no|!+1|!+0.3", "two|!+5|!+0.6", ""]  # the last row is unlabeled
    for k, (image, question) in enumerate(zip(inputs["raw_images_uint8_HWC"], inputs["captions"])):
        Image.fromarray(np.asarray(image)).save(tmp_path / f"img{k}.png")
        rows.append(f"q{k}\timg{k}.png\t{question}\t{refs[k]}")
    (tmp_path / "vqa.tsv").write_text("\n".join(rows) + "\n")
    metrics = evaluate(["--path", FIXTURES / "classify_vl_checkpoint.pt", "--gen-subset", "valid", "--valid-data",
                        tmp_path / "vqa.tsv", "--bpe-dir", fixture_bpe_dir, "--batch-size", 3, "--cpu",
                        "--results-path", tmp_path / "out"])
    preds = json.loads((tmp_path / "out" / "valid_predict.json").read_text())
    logits = torch.tensor([p["logits"] for p in preds])
    expected = load_fixture("classify_vl.pt")["logits"]
    assert scaled_error(logits, expected) <= 1e-5, (logits - expected).abs().max()
    target = torch.zeros(3, 6)
    target[0, 3], target[0, 1], target[1, 5] = 1.0, 0.3, 0.6
    score = target[torch.arange(3), expected.argmax(1)].sum().item()
    assert metrics["accuracy"] == pytest.approx(100 * score / 3, abs=1e-3)
    assert [p["score"] for p in preds] == pytest.approx(target[torch.arange(3), expected.argmax(1)].tolist())


def test_zero_shot_retrieval_reproduces_fixture_embeddings(tmp_path, fixture_bpe_dir):
    """ESC-50-style zero-shot: the task (captions per clip id) from the command line, the model
    from a checkpoint saved with another task; scores = official audio @ text embeddings."""
    ckpt = write_retrieval_checkpoint(tmp_path / "retrieval.pt")
    tsv = write_fixture_clips(tmp_path)
    captions = load_fixture("inputs.pt")["captions"]
    (tmp_path / "captions.json").write_text(json.dumps({f"clip{k}": [c] for k, c in enumerate(captions)}))
    metrics = evaluate(["--path", ckpt, "--task", "audio_text_retrieval", "--zero-shot", "--head-type", "al",
                        "--valid-data", tsv, "--valid-file", tmp_path / "captions.json", "--feature-encoder-spec",
                        TINY_SPEC, "--bpe-dir", fixture_bpe_dir, "--gen-subset", "test", "--batch-size", 3, "--cpu",
                        "--results-path", tmp_path / "out"])
    outputs = load_fixture("encoder_outputs.pt")
    sim = outputs["audio_logits"] @ outputs["text_logits"].t()
    preds = json.loads((tmp_path / "out" / "test_predict.json").read_text())
    for k, pred in enumerate(preds):
        assert pred["top_scores"] == pytest.approx(sim[k].sort(descending=True).values.tolist(), abs=1e-5)
        assert pred["prediction"] == f"clip{int(sim[k].argmax())}"
    expected_r1 = 100 * (sim.argmax(1) == torch.arange(3)).float().mean().item()
    assert metrics["txt_r1"] == pytest.approx(expected_r1, abs=1e-3)
    assert metrics["audio_r1"] == pytest.approx(100 * (sim.t().argmax(1) == torch.arange(3)).float().mean().item(),
                                                abs=1e-3)


def test_task_mismatch_without_zero_shot_is_explained(tmp_path, fixture_bpe_dir):
    """A classification checkpoint on another benchmark: its own task, not --zero-shot (which needs an
    embedding checkpoint and a retrieval task)."""
    tsv = write_fixture_clips(tmp_path)
    with pytest.raises(ValueError) as err:
        evaluate(["--path", FIXTURES / "classify_audio_checkpoint.pt", "--task", "fsd50k", "--valid-data", tsv,
                  "--bpe-dir", fixture_bpe_dir, "--cpu", "--batch-size", 3])
    assert str(err.value).endswith("was trained with task 'vggsound': evaluate it with --task vggsound (or without "
                                   "--task); task 'fsd50k' evaluates a checkpoint fine-tuned for it"), err.value


def test_pretraining_checkpoint_on_a_benchmark_is_told_what_can_be_evaluated(tmp_path, fixture_bpe_dir):
    """--task vqa on a pretraining checkpoint suggested --task image_text_pretrain, which has no evaluation."""
    tsv = write_shape_images(tmp_path)
    path = pretraining_checkpoint(tmp_path)
    with pytest.raises(ValueError) as err:
        evaluate(["--path", path, "--task", "vqa", "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--cpu"])
    assert str(err.value) == (
        f"{path} was trained with task 'image_text_pretrain', which has no evaluation (pretraining); task 'vqa' "
        "evaluates a checkpoint fine-tuned for it; this checkpoint can be evaluated zero-shot on a retrieval task: "
        "--zero-shot --task audio_text_retrieval (or image_text_retrieval, video_text_retrieval)")
    with pytest.raises(ValueError, match=r"which has no evaluation \(pretraining\): evaluate it on "
                                         r"image_text_retrieval with --zero-shot$"):
        evaluate(["--path", path, "--task", "image_text_retrieval", "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir,
                  "--cpu"])


def test_zero_shot_needs_an_embedding_checkpoint_and_a_retrieval_task(tmp_path, fixture_bpe_dir, monkeypatch):
    """--zero-shot on a classification checkpoint ended in a CheckpointMismatchError traceback."""
    no_weights_read(monkeypatch)
    tsv = write_fixture_clips(tmp_path)
    checkpoint = FIXTURES / "classify_audio_checkpoint.pt"
    with pytest.raises(ValueError, match=r"^--zero-shot needs an embedding checkpoint \(a retrieval or pretraining "
                                         r"model.*holds a one_peace_classify model fine-tuned for task 'vggsound': "
                                         r"evaluate it without --zero-shot \(--task vggsound\)$"):
        evaluate(["--path", checkpoint, "--task", "audio_text_retrieval", "--zero-shot", "--valid-data", tsv,
                  "--bpe-dir", fixture_bpe_dir, "--cpu"])
    with pytest.raises(ValueError, match=r"^--zero-shot evaluates an embedding checkpoint on a retrieval task "
                                         r"\(audio_text_retrieval, image_text_retrieval, video_text_retrieval\), "
                                         r"not on fsd50k"):
        evaluate(["--path", write_retrieval_checkpoint(tmp_path / "r.pt"), "--task", "fsd50k", "--zero-shot",
                  "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--cpu"])


def no_weights_read(monkeypatch):
    """Fail the test if the evaluation gets as far as reading the checkpoint's weights."""
    from fairseq import checkpoint_utils

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read before the options were checked")

    monkeypatch.setattr(checkpoint_utils, "load_model_ensemble_and_task", refuse)


@pytest.mark.parametrize("extra, error, message", [
    (["--batch-size", "0"], ValueError, "--batch-size must be at least 1, got 0"),  # was silently 1
    (["--batch-size", "-2"], ValueError, "--batch-size must be at least 1, got -2"),
    (["--num-workers", "-1"], ValueError, "--num-workers must be at least 0, got -1"),
    (["--gen-subset", "a/b"], ValueError, "--gen-subset names the split in the output files"),
    (["--gen-subset", "train"], ValueError, "--gen-subset train evaluates the training split as it is trained on"),
    (["--results-path", "{tmp}/clips.tsv"], NotADirectoryError, "--results-path: {tmp}/clips.tsv exists and is not"),
    (["--valid-data", "{tmp}/nope.tsv"], FileNotFoundError, "--valid-data: TSV file not found: {tmp}/nope.tsv"),
    (["--valid-data", "{tmp}/empty.tsv"], ValueError, "--valid-data: {tmp}/empty.tsv: has a header"),
    (["--selected-cols", "uniq_id,nope"], ValueError, "--valid-data: {tmp}/clips.tsv: column 'nope' not in header"),
    (["--data-root", "{tmp}/nope"], NotADirectoryError, "--data-root: not a directory: {tmp}/nope"),
    (["--max-duration", "0"], ValueError, "--max-duration must be at least 1, got 0"),  # was a ZeroDivisionError
    (["--max-src-length", "0"], ValueError, "--max-src-length must be at least 1, got 0"),
    (["--feature-encoder-spec", "[(32, 10)]"], ValueError, "feature_encoder_spec"),
])
def test_options_are_checked_before_the_weights_are_read(tmp_path, fixture_bpe_dir, monkeypatch, extra, error,
                                                         message):
    tsv = write_fixture_clips(tmp_path)
    (tmp_path / "empty.tsv").write_text("uniq_id\taudio\ttext\tduration\n")
    no_weights_read(monkeypatch)
    argv = ["--path", FIXTURES / "classify_audio_checkpoint.pt", "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir,
            "--cpu", *[a.format(tmp=tmp_path) for a in extra]]
    with pytest.raises(error) as err:
        evaluate(argv)
    assert message.format(tmp=tmp_path) in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.parametrize("extra, error, message", [
    (["--valid-file", "{tmp}/nope.json"], FileNotFoundError, "--valid-file: not found: {tmp}/nope.json"),
    (["--text-batch-size", "0"], ValueError, "--text-batch-size must be at least 1, got 0"),  # range() step 0
    (["--patch-image-size", "0"], ValueError, "--patch-image-size must be at least 1, got 0"),  # a bad row each
    (["--valid-data", ""], ValueError, "no data to evaluate: give the test split's TSV with --valid-data"),
])
def test_zero_shot_options_are_checked_before_the_weights_are_read(tmp_path, fixture_bpe_dir, monkeypatch, extra,
                                                                   error, message):
    tsv = write_shape_images(tmp_path)
    no_weights_read(monkeypatch)
    argv = ["--path", pretraining_checkpoint(tmp_path), "--task", "image_text_retrieval", "--zero-shot",
            "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--patch-image-size", 32, "--cpu",
            *[a.format(tmp=tmp_path) for a in extra]]
    with pytest.raises(error) as err:
        evaluate(argv)
    assert message.format(tmp=tmp_path) in str(err.value), err.value


def test_a_saved_path_that_is_gone_is_named_as_the_checkpoints(tmp_path, fixture_bpe_dir, monkeypatch):
    """A checkpoint trained elsewhere keeps that machine's data root: the error says where it came from."""
    state = torch.load(FIXTURES / "classify_audio_checkpoint.pt", map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data_root"] = str(tmp_path / "elsewhere")
    torch.save(state, tmp_path / "moved.pt")
    tsv = write_fixture_clips(tmp_path)
    no_weights_read(monkeypatch)
    common = ["--path", tmp_path / "moved.pt", "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--cpu"]
    with pytest.raises(NotADirectoryError, match=r"^--data-root \(saved in the checkpoint; give --data-root to "
                                                 r"replace it\): not a directory: .*elsewhere$"):
        evaluate(common)
    with pytest.raises(NotADirectoryError, match=r"^--data-root: not a directory: .*nowhere$"):
        evaluate(common + ["--data-root", tmp_path / "nowhere"])


def test_images_smaller_than_the_checkpoints_are_one_error_naming_the_setting(tmp_path, fixture_bpe_dir):
    tsv = write_shape_images(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit the one_peace_retrieval model of task image_text_retrieval: "
                                         r"cannot shrink .*trained on a grid of 2x2 patches.*\(patch_image_size\)$"):
        evaluate(["--path", pretraining_checkpoint(tmp_path), "--task", "image_text_retrieval", "--zero-shot",
                  "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--patch-image-size", 16, "--cpu"])


def test_missing_checkpoint_and_bad_overrides(tmp_path, fixture_bpe_dir):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate(["--path", tmp_path / "nope.pt", "--cpu"])
    tsv = write_fixture_clips(tmp_path)
    with pytest.raises(ValueError, match="model-overrides"):
        evaluate(["--path", FIXTURES / "classify_audio_checkpoint.pt", "--valid-data", tsv, "--bpe-dir",
                  fixture_bpe_dir, "--cpu", "--model-overrides", "__import__('os')"])


def test_model_overrides_reach_the_saved_task(tmp_path, fixture_bpe_dir):
    """The official scripts pass data paths through --model-overrides; a missing label map names the file."""
    tsv = write_fixture_clips(tmp_path)
    overrides = {"task": {"valid_data": str(tsv), "bpe_dir": fixture_bpe_dir, "label_file": str(tmp_path / "x.json")}}
    with pytest.raises(FileNotFoundError, match="x.json"):
        evaluate(["--path", FIXTURES / "classify_audio_checkpoint.pt", "--cpu", "--model-overrides", repr(overrides)])


def _distributed_worker(rank, port, argv, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    metrics = evaluate(argv + ["--distributed-backend", "gloo"])
    torch.save(metrics, os.path.join(out_dir, f"metrics{rank}.pt"))


@pytest.mark.slow  # two spawned processes
def test_two_workers_equal_one_process(tmp_path, fixture_bpe_dir):
    """torchrun-style evaluation: each worker scores a share of the clips and embeds a share of
    the captions; gathered metrics and predictions equal a single process."""
    import socket

    import torch.multiprocessing as mp

    ckpt = write_retrieval_checkpoint(tmp_path / "retrieval.pt")
    tsv = write_fixture_clips(tmp_path)
    captions = load_fixture("inputs.pt")["captions"]
    (tmp_path / "captions.json").write_text(json.dumps({f"clip{k}": [c, c + " again"] for k, c in enumerate(captions)}))

    def argv(out):
        return [str(a) for a in ["--path", ckpt, "--task", "audio_text_retrieval", "--zero-shot", "--head-type", "al",
                                 "--valid-data", tsv, "--valid-file", tmp_path / "captions.json",
                                 "--feature-encoder-spec", TINY_SPEC, "--bpe-dir", fixture_bpe_dir, "--gen-subset",
                                 "test", "--batch-size", 1, "--cpu", "--results-path", tmp_path / out]]

    single = evaluate(argv("single"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_distributed_worker, args=(port, argv("multi"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"metrics{rank}.pt") == pytest.approx(single)
    preds = [json.loads((tmp_path / out / "test_predict.json").read_text()) for out in ("single", "multi")]
    assert [p["uniq_id"] for p in preds[1]] == ["clip0", "clip1", "clip2"]
    for a, b in zip(*preds):
        assert a["top_ids"] == b["top_ids"] and a["top_scores"] == pytest.approx(b["top_scores"], abs=1e-6)


def write_shape_images(root: Path, n=12, caption_column="caption"):
    """``n`` small generated images in the image_text_retrieval layout (captions in the TSV)."""
    rows = [f"image_id\timage\t{caption_column}"]
    for k in range(n):
        Image.new("RGB", (40, 32), (20 * k % 255, 200 - 10 * k, 90)).save(root / f"img{k}.png")
        rows.append(f"img{k}\timg{k}.png\ta picture number {k}")
    (root / "images.tsv").write_text("\n".join(rows) + "\n")
    return root / "images.tsv"


def pretraining_checkpoint(tmp_path):
    cfg = json.loads((FIXTURES / "config.json").read_text())["pretrain_cfg_image_text"]
    path = tmp_path / "pretrain.pt"
    torch.save({"args": None, "cfg": cfg, "model": load_fixture("pretrain_state_dict.pt")}, path)
    return path


def test_zero_shot_of_a_pretraining_checkpoint_picks_the_retrieval_model(tmp_path, fixture_bpe_dir):
    """The command the refusal message suggests, without --model-overrides or --valid-file: the
    captions come from the TSV's own image_id/caption columns."""
    tsv = write_shape_images(tmp_path)
    metrics = evaluate(["--path", pretraining_checkpoint(tmp_path), "--task", "image_text_retrieval", "--zero-shot",
                        "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--patch-image-size", 32,
                        "--gen-subset", "test", "--batch-size", 4, "--cpu"])
    assert metrics["img_count"] == 12 and metrics["txt_count"] == 12
    assert 0 <= metrics["r_mean"] <= 100


def test_zero_shot_captions_error_names_the_layouts_columns(tmp_path, fixture_bpe_dir):
    tsv = write_shape_images(tmp_path, caption_column="text")
    with pytest.raises(ValueError, match=r"column 'caption' not in header|image_id and caption columns"):
        evaluate(["--path", pretraining_checkpoint(tmp_path), "--task", "image_text_retrieval", "--zero-shot",
                  "--valid-data", tsv, "--bpe-dir", fixture_bpe_dir, "--patch-image-size", 32, "--cpu"])


def test_help_leads_with_our_description_and_options():
    proc = subprocess.run([str(VENV_BIN / "one-peace-evaluate"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) < 200, len(lines)
    head = "\n".join(lines[:40])
    assert "Evaluate a ONE-PEACE checkpoint" in head
    for option in ("--zero-shot", "--valid-data", "--bpe-dir", "--path", "--help-all"):
        assert option in proc.stdout, option
    assert "DEBUG" not in proc.stdout + proc.stderr
    retrieval = subprocess.run([str(VENV_BIN / "one-peace-evaluate"), "--task", "image_text_retrieval", "--help"],
                               capture_output=True, text=True, timeout=120)
    assert "--valid-file" in retrieval.stdout and "--use-template" in retrieval.stdout


def test_console_errors_are_one_line_and_runs_print_no_debug(tmp_path, fixture_bpe_dir):
    tsv = write_shape_images(tmp_path)
    common = [str(VENV_BIN / "one-peace-evaluate"), "--path", str(pretraining_checkpoint(tmp_path)), "--task",
              "image_text_retrieval", "--zero-shot", "--bpe-dir", fixture_bpe_dir, "--patch-image-size", "32",
              "--cpu", "--batch-size", "4"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("ONE_PEACE_TRACEBACK", None)
    ok = subprocess.run(common + ["--valid-data", str(tsv)], capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "DEBUG" not in ok.stdout + ok.stderr, [line for line in ok.stderr.splitlines() if "DEBUG" in line][:3]
    (tmp_path / "bad.tsv").write_text("uniq_id\taudio\n1\tx.wav\n")
    bad = subprocess.run(common + ["--valid-data", str(tmp_path / "bad.tsv")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and "one-peace-evaluate: error:" in bad.stderr, bad.stderr[-2000:]
    assert "bad.tsv" in bad.stderr and "image_id" in bad.stderr
