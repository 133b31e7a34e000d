"""Audio tasks' contracts: row parsing and bad input, criteria, the audio-visual model, converters."""
import json
import os
from pathlib import Path

import pytest
import torch
from audio_bench_data import TINY_SPEC, make_audio_data, write_clip, write_tsv
from e2e_helpers import run_script_module
from helpers import scaled_error

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONE_PEACE_SHARED", REPO.parent / "shared"))
BPE_DIR = SHARED / "assets" / "bpe"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_audio_data(tmp_path_factory.mktemp("audio_bench"))


# ---- datasets: layouts and bad input ---------------------------------------------------------
def make_task(config_cls, task_cls, **fields):
    from omegaconf import OmegaConf

    import one_peace.user_src.registry  # noqa: F401

    cfg = OmegaConf.structured(config_cls(bpe_dir=str(BPE_DIR), feature_encoder_spec=TINY_SPEC, **fields))
    return task_cls.setup_task(cfg)


def test_vggsound_unknown_label_skipped_in_training_and_named_in_evaluation(data, tmp_path):
    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.tasks.audio_tasks.vggsound import VggsoundConfig, VggsoundTask

    rows = [("a", "audio/clip0.wav", 1, 1.0), ("b", "audio/clip1.wav", 7, 1.0), ("c", "audio/clip2.wav", "x", 1.0)]
    tsv = write_tsv(data["root"] / "bad_labels.tsv", ["uniq_id", "audio", "text", "duration"], rows)
    task = make_task(VggsoundConfig, VggsoundTask, data=tsv, valid_data=tsv, num_classes=3)
    task.load_dataset("train")
    train = task.datasets["train"]
    batch = train.collater([train[i] for i in range(3)])
    assert batch["num_skipped"] == 2 and batch["target"].tolist() == [1]
    task.load_dataset("valid")
    with pytest.raises(BadSampleError, match=r"bad_labels.tsv, row 3: unknown label 7"):
        task.datasets["valid"][1]
    with pytest.raises(BadSampleError, match=r"row 4: label 'x' is not an integer"):
        task.datasets["valid"][2]


def test_missing_label_map_and_caption_files_are_named(data):
    from one_peace.tasks.audio_tasks.audio_text_retrieval import AudioTextRetrievalConfig, AudioTextRetrievalTask
    from one_peace.tasks.audio_tasks.vggsound import VggsoundConfig, VggsoundTask

    with pytest.raises(FileNotFoundError, match="label map file not found: .*nope.json"):
        make_task(VggsoundConfig, VggsoundTask, num_classes=3, label_file="/nope.json")
    task = make_task(AudioTextRetrievalConfig, AudioTextRetrievalTask, valid_file="/missing/esc50_label.json")
    with pytest.raises(FileNotFoundError, match="esc50_label.json"):
        task.load_bank()


def test_aqa_candidates_parsed_and_wrong_count_rejected(data):
    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.tasks.audio_tasks.aqa import AQAConfig, AQATask

    rows = [("q0", "audio/clip0.wav", "Is it loud?&&&yes&&&no&&&maybe&&&never&&&1", 1.0),
            ("q1", "audio/clip1.wav", "Is it loud?&&&yes&&&no&&&1", 1.0)]
    tsv = write_tsv(data["root"] / "aqa_bad.tsv", ["uniq_id", "audio", "text", "duration"], rows)
    task = make_task(AQAConfig, AQATask, valid_data=tsv)
    task.load_dataset("valid")
    ds = task.datasets["valid"]
    batch = ds.collater([ds[0]])
    assert batch["net_input"]["src_tokens"].size(0) == 4 and batch["net_input"]["src_audios"].size(0) == 4
    assert task.tokenizer.decode(batch["net_input"]["src_tokens"][2]) == "is it loud? answer: maybe"
    assert batch["target"].tolist() == [1]
    with pytest.raises(BadSampleError, match="row 3: AQA text has 4 '&&&'-separated fields, expected 6"):
        ds[1]


def test_clip_shorter_than_receptive_field_names_the_file(data):
    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.tasks.audio_tasks.fsd50k import FSD50KConfig, FSD50KTask

    task = make_task(FSD50KConfig, FSD50KTask, valid_data=data["fsd"], num_classes=4)
    task.cfg.feature_encoder_spec = "[(8, 40000, 5)]"  # 2.5 s receptive field > the 1-2 s clips
    task.load_dataset("valid")
    with pytest.raises(BadSampleError, match=r"clip0.wav: audio of 16000 samples is shorter than"):
        task.datasets["valid"][0]


def test_fsd50k_multi_hot_and_av_frames(data):
    from one_peace.tasks.audio_tasks.fsd50k import FSD50KConfig, FSD50KTask
    from one_peace.tasks.audio_tasks.vggsound_av import VggsoundAVConfig, VggsoundAVTask, frame_indices

    task = make_task(FSD50KConfig, FSD50KTask, valid_data=data["fsd"], num_classes=4)
    task.load_dataset("valid")
    assert task.datasets["valid"][1]["target"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert frame_indices(3, 2) == [0, 2] and frame_indices(5, 3) == [0, 2, 4] and frame_indices(2, 3) == [0, 1, 0]
    task = make_task(VggsoundAVConfig, VggsoundAVTask, valid_data=data["vgg_av"], num_classes=3, num_frames=2,
                     patch_image_size=32)
    task.load_dataset("valid")
    ds = task.datasets["valid"]
    batch = ds.collater([ds[0], ds[1]])
    assert batch["net_input"]["src_images"].shape == (2, 2, 3, 32, 32)


# ---- criteria --------------------------------------------------------------------------------
def test_hinge_loss_honours_margin_and_num_choices():
    from one_peace.criterions.hinge_loss import HingeLossCriterion

    logits = torch.tensor([1.0, 0.5, -1.0, 2.0, 0.0, 0.0, 3.0, 0.0]).unsqueeze(1)  # 2 questions x 4
    sample = {"target": torch.tensor([0, 2])}
    # Question 1: scores (1, .5, -1, 2), correct 0; question 2: (0, 0, 3, 0), correct 2.
    for margin, expected in ((1.0, (1 + 0.5 + 0 + 2) + (0 + 0 + 1 + 0)), (0.25, (0.25 + 0 + 0 + 1.25) + 0.25)):
        loss, size, log = HingeLossCriterion(None, margin=margin, num_choices=4).loss_from_logits(logits, sample)
        assert loss.item() == pytest.approx(expected) and size == 2
        assert log["n_correct"] == 1
    with pytest.raises(ValueError, match="multiple of num_choices=3"):
        HingeLossCriterion(None, num_choices=3).loss_from_logits(logits, sample)


def test_classify_criterion_sums_and_uses_samples_as_sample_size():
    import torch.nn.functional as F

    from one_peace.criterions.classify_loss import ClassifyCriterion

    logits = torch.randn(5, 4)
    target = torch.tensor([0, 3, 1, 1, 2])
    loss, size, _ = ClassifyCriterion(None, label_smoothing=0.1).loss_from_logits(logits, {"target": target})
    assert size == 5 and loss.item() == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum").item(), rel=1e-6)
    multi = (torch.rand(5, 4) > 0.5).float()
    loss, size, _ = ClassifyCriterion(None, use_multi_label=True).loss_from_logits(logits, {"target": multi})
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, multi, reduction="sum").item(),
                                        rel=1e-6)


def test_retrieval_loss_columns_carry_no_gradient():
    from one_peace.criterions.contrastive import cross_modal_contrast

    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    loss, _, _ = cross_modal_contrast(a, t, torch.tensor(10.0))
    grad_a, = torch.autograd.grad(loss, a)
    # Only the audio->text direction (audio rows) reaches the audio embeddings.
    rows_only = torch.nn.functional.cross_entropy(10.0 * a @ t.detach().t(), torch.arange(4)) / 2
    expected, = torch.autograd.grad(rows_only, a)
    assert scaled_error(grad_a, expected) <= 1e-5


def _retrieval_worker(rank, port, out_dir):
    import torch.distributed as dist

    from one_peace.criterions.contrastive import cross_modal_contrast

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        a, t = torch.randn(5, 8), torch.randn(5, 8)
        rows = slice(0, 2) if rank == 0 else slice(2, 5)  # unequal batch sizes: 2 and 3
        loss, a2t, t2a = cross_modal_contrast(a[rows], t[rows], torch.tensor(3.0), label_smoothing=0.1)
        torch.save({"loss": loss.item(), "rows": rows.stop - rows.start, "correct": a2t + t2a},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_retrieval_loss_with_unequal_worker_batches_equals_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from one_peace.criterions.contrastive import cross_modal_contrast

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_retrieval_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    a, t = torch.randn(5, 8), torch.randn(5, 8)
    loss, a2t, t2a = cross_modal_contrast(a, t, torch.tensor(3.0), label_smoothing=0.1)
    assert sum(p["loss"] * p["rows"] for p in parts) / 5 == pytest.approx(loss.item(), rel=1e-6)
    assert sum(p["correct"] for p in parts) == a2t + t2a


# ---- audio-visual model ----------------------------------------------------------------------
def tiny_av_models():
    from omegaconf import OmegaConf

    from one_peace.models.architectures import preset_config
    from one_peace.models.audio_visual import OnePeaceAudioVisualClassifyModel
    from one_peace.models.config import OnePeaceClassifyConfig
    from one_peace.models.one_peace import OnePeaceClassifyModel

    cfg = preset_config(OnePeaceClassifyConfig, "tiny")
    cfg.attn_pooling, cfg.head_scale_ratio = True, 2
    cfg = OmegaConf.structured(cfg)
    torch.manual_seed(0)
    av = OnePeaceAudioVisualClassifyModel(cfg, num_classes=5).eval()
    audio = OnePeaceClassifyModel(cfg, head_type="audio", num_classes=5).eval()
    # The audio-only model's weights are a subset of the AV model's (same keys).
    audio.load_state_dict({k: v for k, v in av.state_dict().items() if k in audio.state_dict()})
    return av, audio


def test_av_model_without_frames_is_the_audio_model_and_frames_are_a_set():
    av, audio = tiny_av_models()
    inputs = load_audio_batch()
    with torch.no_grad():
        assert scaled_error(av(**inputs), audio(**inputs)) <= 1e-5
        frames = torch.randn(2, 3, 3, 32, 32)
        with_frames = av(src_images=frames, **inputs)
        shuffled = av(src_images=frames[:, [2, 0, 1]], **inputs)
    assert with_frames.shape == (2, 5) and not torch.allclose(with_frames, av(**inputs))
    assert scaled_error(shuffled, with_frames) <= 1e-5  # no temporal order across frames


def load_audio_batch():
    from one_peace.data_utils.audio import audio_padding_mask, conv_output_frames, prepare_waveform
    from one_peace.data_utils.collate import collate_audios

    torch.manual_seed(1)
    waves = [prepare_waveform(torch.randn(n)) for n in (16000, 20000)]
    masks = [audio_padding_mask(conv_output_frames(w.numel(), TINY_SPEC)) for w in waves]
    src_audios, padding = collate_audios(waves, masks)
    return {"src_audios": src_audios, "audio_padding_masks": padding}


# ---- data converters -------------------------------------------------------------------------
def converter(path):
    return run_script_module(path).main


def test_converters_write_the_task_layouts(tmp_path):
    from one_peace.data_utils.tsv import TSVReader

    src = tmp_path / "src"
    (src / "meta").mkdir(parents=True)
    (src / "audio").mkdir()
    for name in ("1-100-A-0.wav", "2-101-A-1.wav"):
        write_clip(src / "audio" / name, 0.5, 440, seed=0)
    (src / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100-A-0.wav,1,0,dog,True,100,A\n2-101-A-1.wav,2,1,chirping_birds,False,101,A\n")
    converter("esc50/convert_esc50.py")(["--esc50-root", str(src), "--out-dir", str(tmp_path / "esc50")])
    rows = list(TSVReader(tmp_path / "esc50" / "esc50.tsv"))
    assert [(r["uniq_id"], r["text"]) for r in rows] == [("0", "dog"), ("1", "chirping birds")]
    assert json.loads((tmp_path / "esc50" / "esc50_label.json").read_text()) == {"0": ["dog"], "1": ["chirping birds"]}
    assert [r["text"] for r in TSVReader(tmp_path / "esc50" / "esc50_fold1_test.tsv")] == ["0"]

    fsd = tmp_path / "FSD50K"
    (fsd / "FSD50K.ground_truth").mkdir(parents=True)
    (fsd / "FSD50K.dev_audio").mkdir()
    (fsd / "FSD50K.eval_audio").mkdir()
    write_clip(fsd / "FSD50K.dev_audio" / "11.wav", 0.5, 300, seed=1)
    write_clip(fsd / "FSD50K.eval_audio" / "22.wav", 0.5, 300, seed=2)
    gt = fsd / "FSD50K.ground_truth"
    (gt / "vocabulary.csv").write_text("0,Bark,/m/a\n1,Rain,/m/b\n2,Bell,/m/c\n")
    (gt / "dev.csv").write_text('fname,labels,mids,split\n11,"Rain,Bark","/m/b,/m/a",train\n33,Bell,/m/c,val\n')
    (gt / "eval.csv").write_text("fname,labels,mids\n22,Bell,/m/c\n")
    converter("fsd50k/convert_fsd50k.py")(["--fsd50k-root", str(fsd), "--out-dir", str(tmp_path / "fsd")])
    assert [r["text"] for r in TSVReader(tmp_path / "fsd" / "fsd50k_dev.tsv")] == ["0,1"]  # clip 33 missing
    assert [r["text"] for r in TSVReader(tmp_path / "fsd" / "fsd50k_eval.tsv")] == ["2"]

    (src / "clotho.csv").write_text("file_name,caption_1,caption_2\n1-100-A-0.wav,A dog barks.,\"Barking, loud\"\n")
    converter("audio_text_retrieval/convert_captions.py")(
        ["clotho", "--csv", str(src / "clotho.csv"), "--audio-dir", str(src / "audio"), "--name", "clotho_eval",
         "--out-dir", str(tmp_path / "ret")])
    assert len(TSVReader(tmp_path / "ret" / "clotho_eval.tsv")) == 1
    assert len(TSVReader(tmp_path / "ret" / "clotho_eval_pairs.tsv")) == 2
    assert json.loads((tmp_path / "ret" / "clotho_eval_texts.json").read_text()) == {
        "1-100-A-0": ["A dog barks.", "Barking, loud"]}

    (src / "qa.json").write_text(json.dumps([{"id": 7, "video_name": "1-100-A-0", "question_text": "What is it?",
                                              "multi_choice": ["dog", "cat", "car", "rain"], "answer": 0}]))
    converter("aqa/convert_avqa.py")(["--qa", str(src / "qa.json"), "--audio-dir", str(src / "audio"),
                                      "--audio-name", "{video}.wav", "--out", str(tmp_path / "avqa.tsv")])
    assert next(iter(TSVReader(tmp_path / "avqa.tsv")))["text"] == "What is it?&&&dog&&&cat&&&car&&&rain&&&0"
