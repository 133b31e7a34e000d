"""Audio benchmarks end to end on generated data: every run script fine-tunes and evaluates.

Every benchmark gets a tiny dataset in the official TSV layout (16 kHz clips of 1-2 s),
is fine-tuned for a few updates through its run script (``fairseq-hydra-train`` with the
benchmark's yaml, its size preset swapped for the tiny one by hydra overrides) and
evaluated through ``one_peace.evaluate``.
"""

import numpy as np
import pytest
from audio_bench_data import TINY_SPEC, make_audio_data
from e2e_helpers import BPE_DIR, REPO, evaluate, finetune, read_results, run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_audio_data(tmp_path_factory.mktemp("audio_bench"))


@pytest.fixture(scope="module")
def retrieval_checkpoint(tmp_path_factory, fixture_bpe_dir):
    from test_evaluate import write_retrieval_checkpoint

    return write_retrieval_checkpoint(tmp_path_factory.mktemp("retrieval") / "retrieval.pt")


# ---- end to end ------------------------------------------------------------------------------
def test_vggsound_finetune_and_evaluate_scripts(data, tmp_path):
    ckpt, log = finetune("vggsound/finetune.sh", data, tmp_path, data["vgg"], data["vgg"], "task.num_classes=3")
    assert "accuracy" in log  # validation during training reports the task metric
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/vggsound/evaluate.sh"), "--cpu"],
        dict(CHECKPOINT=str(ckpt), TEST_TSV=data["vgg"], RESULTS_DIR=str(results)), tmp_path)
    preds, metrics = read_results(results)
    assert set(metrics) >= {"accuracy"} and 0 <= metrics["accuracy"] <= 100
    assert [p["uniq_id"] for p in preds] == [f"clip{i}" for i in range(6)]
    assert all(len(p["logits"]) == 3 and p["target"] == i % 3 for i, p in enumerate(preds))


def test_audio_text_retrieval_finetune_and_evaluate(data, tmp_path):
    ckpt, log = finetune("audio_text_retrieval/finetune.sh", data, tmp_path, data["ret_train"], data["ret_train"],
                         VALID_FILE=data["ret_valid_file"])
    assert "txt_r1" in log and "audio_r1" in log  # validation recall during training
    results = tmp_path / "results"
    metrics = evaluate(["--path", ckpt, "--gen-subset", "test", "--valid-data", data["ret_train"], "--valid-file",
                        data["ret_valid_file"], "--bpe-dir", BPE_DIR, "--batch-size", 4, "--cpu",
                        "--results-path", results])
    keys = {"txt_r1", "txt_r5", "txt_r10", "audio_r1", "audio_r5", "audio_r10", "r_mean"}
    assert keys <= set(metrics) and set(read_results(results)[1]) >= keys
    preds = read_results(results)[0]
    assert len(preds) == 6 and len(preds[0]["top_ids"]) == 10  # 12 captions, top 10 kept


def test_esc50_zero_shot_script(data, tmp_path, retrieval_checkpoint, fixture_bpe_dir):
    """ESC-50 zero-shot through its script: model from the checkpoint, task from the command line."""
    results = tmp_path / "esc50"
    run(["bash", str(REPO / "run_scripts/esc50/zero_shot_evaluate.sh"), "--cpu", "--feature-encoder-spec", TINY_SPEC],
        dict(CHECKPOINT=str(retrieval_checkpoint), ESC50_TSV=data["esc50"], ESC50_LABELS=data["esc50_labels"],
             RESULTS_DIR=str(results), PRECISION="fp32", BPE_DIR=fixture_bpe_dir), tmp_path)
    preds, metrics = read_results(results, "esc50")
    assert "txt_r1" in metrics and len(preds) == 6
    accuracy = 100 * np.mean([p["prediction"] == p["uniq_id"] for p in preds])
    assert metrics["txt_r1"] == pytest.approx(accuracy)  # R@1 audio->text is the zero-shot accuracy


def test_fsd50k_finetune_selects_on_map_and_evaluates(data, tmp_path):
    ckpt, log = finetune("fsd50k/finetune.sh", data, tmp_path, data["fsd"], data["fsd"], "task.num_classes=4")
    assert "| map " in log and "map_classes" in log
    results = tmp_path / "results"
    metrics = evaluate(["--path", ckpt, "--gen-subset", "test", "--valid-data", data["fsd"], "--bpe-dir", BPE_DIR,
                        "--batch-size", 4, "--cpu", "--results-path", results])
    assert {"map", "map_classes", "map_cnt"} <= set(metrics) and metrics["map_cnt"] == 6
    preds, _ = read_results(results)
    assert len(preds[0]["probabilities"]) == 4 and preds[0]["target"] == [0, 1]


def test_aqa_finetune_and_evaluate(data, tmp_path):
    ckpt, log = finetune("aqa/finetune.sh", data, tmp_path, data["aqa"], data["aqa"])
    assert "accuracy" in log
    results = tmp_path / "results"
    metrics = evaluate(["--path", ckpt, "--gen-subset", "test", "--valid-data", data["aqa"], "--bpe-dir", BPE_DIR,
                        "--batch-size", 2, "--cpu", "--results-path", results])
    preds, _ = read_results(results)
    assert "accuracy" in metrics and len(preds) == 6 and len(preds[0]["scores"]) == 4
    assert metrics["accuracy"] == pytest.approx(100 * np.mean([p["prediction"] == p["target"] for p in preds]))


def test_vggsound_audio_visual_finetune_and_evaluate(data, tmp_path):
    ckpt, log = finetune("vggsound/finetune_av.sh", data, tmp_path, data["vgg_av"], data["vgg_av"],
                         "task.num_classes=3", "task.num_frames=2")
    assert "OnePeaceClassifyAV" in log
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/vggsound/evaluate_av.sh"), "--cpu"],
        dict(CHECKPOINT=str(ckpt), TEST_TSV=data["vgg_av"], RESULTS_DIR=str(results)), tmp_path)
    preds, metrics = read_results(results)
    assert "accuracy" in metrics and len(preds) == 6
