"""Hub calls that used to answer wrongly or unhelpfully: each checkpoint serves only the methods its head
fits, label maps in every JSON shape, inputs checked before the model sees them, PIL images everywhere."""
import inspect
import json

import numpy as np
import pytest
import torch
from helpers import TASK_FIXTURES, load_task_fixture
from PIL import Image

from one_peace import from_pretrained

ANSWERS = ["yes", "no", "two", "three", "one", "red"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    raw = load_task_fixture("task_inputs.pt")["raw"]
    out = tmp_path_factory.mktemp("vl_images")
    paths = []
    for i, array in enumerate(raw["refcoco"]["images_uint8_HWC"]):
        paths.append(str(out / f"{i}.png"))
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(paths[-1])
    return paths


def load(name, bpe_dir, **kw):
    return from_pretrained(str(TASK_FIXTURES / name), model_type="one_peace_classify", device="cpu",
                           bpe_dir=bpe_dir, **kw)


@pytest.fixture(scope="module")
def vqa(fixture_bpe_dir):
    return load("ckpt_vqa.pt", fixture_bpe_dir)


@pytest.fixture(scope="module")
def refcoco(fixture_bpe_dir):
    return load("ckpt_refcoco_imgfeat.pt", fixture_bpe_dir)


@pytest.fixture(scope="module")
def retrieval(retrieval_checkpoint, fixture_bpe_dir):
    return from_pretrained(retrieval_checkpoint, device="cpu", bpe_dir=fixture_bpe_dir)


@pytest.mark.parametrize("shape", ["json_str_keys", "int_keys", "list", "json_file_list", "lists_as_values"])
def test_answer_label_map_in_every_json_shape(vqa, images, tmp_path, shape):
    label_map = {
        "json_str_keys": json.loads(json.dumps(dict(enumerate(ANSWERS)))),  # what json.load gives: str keys
        "int_keys": dict(enumerate(ANSWERS)),
        "list": list(ANSWERS),
        "json_file_list": tmp_path / "answers.json",
        "lists_as_values": {str(i): [a, a.upper()] for i, a in enumerate(ANSWERS)},
    }[shape]
    (tmp_path / "answers.json").write_text(json.dumps(ANSWERS))
    answers = vqa.answer(images[:2], ["what is it?", "what colour?"], k=6, label_map=label_map)
    assert all(sorted(name for name, _ in ranked) == sorted(ANSWERS) for ranked in answers)
    reference = vqa.answer(images[:2], ["what is it?", "what colour?"], k=6, label_map=dict(enumerate(ANSWERS)))
    assert answers == reference


def test_answer_label_map_errors(vqa, images):
    with pytest.raises(ValueError, match=r"names 3 answers but the checkpoint has 6.*\[3, 4, 5\]"):
        vqa.answer(images[:1], ["q"], label_map=ANSWERS[:3])
    with pytest.raises(ValueError, match="key 'yes' is not an integer class id"):
        vqa.answer(images[:1], ["q"], label_map={"yes": "no"})
    with pytest.raises(TypeError, match="label_map must be a dict"):
        vqa.answer(images[:1], ["q"], label_map=3)


def test_each_method_refuses_a_checkpoint_whose_head_does_not_fit(vqa, refcoco, retrieval, images):
    with pytest.raises(ValueError, match=r"answer needs a VQA checkpoint.*'refcoco'.*use hub.ground"):
        refcoco.answer(images[:1], ["what is it?"], label_map=ANSWERS[:4])
    with pytest.raises(ValueError, match=r"ground needs a grounding.*'vqa'.*use hub.answer"):
        vqa.ground(images[:1], ["a cat"])
    with pytest.raises(ValueError, match=r"verify needs an NLVR2 checkpoint.*'vqa'.*use hub.answer"):
        vqa.verify(images[:1], images[1:2], ["two cats"])
    with pytest.raises(ValueError, match=r"ground needs a grounding.*model_type='one_peace_classify'.*"
                                         r"this one is one_peace_retrieval"):
        retrieval.ground(images[:1], ["a cat"])
    with pytest.raises(ValueError, match=r"extract_text_features needs an embedding checkpoint.*"
                                         r"one_peace_classify \(head_type vl.*use extract_vl_features"):
        vqa.extract_text_features(vqa.process_text(["a cat"]))
    with pytest.raises(ValueError, match=r"extract_vl_features needs a vision-language classification.*"
                                         r"one_peace_retrieval"):
        retrieval.extract_vl_features(retrieval.process_image(images[:1]), retrieval.process_text(["a"]))
    with pytest.raises(ValueError, match=r"zero-shot classification needs an image-text embedding.*one_peace_classify"):
        vqa.zero_shot_classify(images[:1], ["cat", "dog"])


def test_nlvr2_through_the_hub(fixture_bpe_dir, images):
    """verify(images, images_2, statements): the NLVR2 model's own logits, class 0 = true."""
    official = load_task_fixture("nlvr2.pt")
    hub = load("ckpt_nlvr2.pt", fixture_bpe_dir)
    out = hub.verify(images[:2], images[2:4], ["there are two dogs", "the left image is red"])
    assert [set(o) for o in out] == [{"label", "probability"}] * 2
    with torch.no_grad():
        logits = hub.model(src_images=hub.process_image(images[:2]), src_images_2=hub.process_image(images[2:4]),
                           src_tokens=hub.process_text(["there are two dogs", "the left image is red"]))
    p_true = torch.softmax(logits.float(), -1)[:, 0]
    assert [o["probability"] for o in out] == pytest.approx(p_true.tolist(), abs=1e-6)
    assert [o["label"] for o in out] == [p > 0.5 for p in p_true.tolist()]
    assert official["logits"].shape[1] == 2  # the fixture's NLVR2 head: (true, false)
    with pytest.raises(ValueError, match="got 1 images_2 but 2 statements"):
        hub.verify(images[:2], images[2:3], ["a", "b"])


def test_modalities_option_is_checked(retrieval_checkpoint, fixture_bpe_dir):
    with pytest.raises(ValueError, match=r"unknown modality 'foo'; registered: text, image, audio"):
        from_pretrained(retrieval_checkpoint, device="cpu", bpe_dir=fixture_bpe_dir, modalities=("foo",))
    with pytest.raises(ValueError, match=r"modalities= chooses the branches of a one_peace_retrieval model"):
        load("ckpt_vqa.pt", fixture_bpe_dir, modalities=("text", "video"))


def test_checkpoint_without_weights_names_the_file(retrieval_checkpoint, tmp_path, fixture_bpe_dir):
    state = torch.load(retrieval_checkpoint, weights_only=False)
    state["model"] = {}
    torch.save(state, tmp_path / "stripped.pt")
    with pytest.raises(ValueError, match=r"stripped.pt holds no model weights \(its 'model' entry is empty\)"):
        from_pretrained(str(tmp_path / "stripped.pt"), device="cpu", bpe_dir=fixture_bpe_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_cuda_without_a_gpu_is_refused_before_reading(tmp_path):
    # the file does not even exist: the device is checked first
    with pytest.raises(ValueError, match=r"device='cuda' but this torch sees no CUDA GPU"):
        from_pretrained(str(tmp_path / "absent.pt"), device="cuda")


def test_inputs_are_cast_or_refused_clearly(retrieval, images):
    src = retrieval.process_image(images[:2])
    reference = retrieval.extract_image_features(src)
    assert torch.allclose(retrieval.extract_image_features(src.double()), reference, atol=1e-6)
    with pytest.raises(TypeError, match="src_images must be a float tensor"):
        retrieval.extract_image_features((src * 50).to(torch.uint8))
    tokens = retrieval.process_text(["a cat"])
    with pytest.raises(ValueError, match=r"src_tokens holds ids outside the dictionary \(0\.\.255\)"):
        retrieval.extract_text_features(tokens + 10_000)
    with pytest.raises(TypeError, match="src_tokens must hold integer token ids"):
        retrieval.extract_text_features(tokens.float())


def test_audio_mask_of_another_batch_size_is_named(retrieval, tmp_path):
    import soundfile as sf

    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", np.sin(np.arange(16000 * (i + 1)) / 9.0).astype(np.float32), 16000)
    audios, masks = retrieval.process_audio([str(tmp_path / "0.wav"), str(tmp_path / "1.wav")])
    with pytest.raises(ValueError, match=r"batch size: src_audios 2, audio_padding_masks 1"):
        retrieval.extract_audio_features(audios, masks[:1])


def test_pil_images_everywhere(refcoco, retrieval, images):
    pil = [Image.open(p) for p in images[:2]]
    assert torch.equal(retrieval.process_image(pil), retrieval.process_image(images[:2]))
    mixed = retrieval.process_image([pil[0], images[1]])
    assert torch.equal(mixed, retrieval.process_image(images[:2]))
    assert torch.equal(refcoco.ground(pil, ["a", "b"]), refcoco.ground(images[:2], ["a", "b"]))
    _, widths, heights = retrieval.process_image(pil, return_image_sizes=True)
    assert widths.tolist() == [im.width for im in pil] and heights.tolist() == [im.height for im in pil]
    with pytest.raises(TypeError, match=r"image_paths\[1\] must be a file path or a PIL image, got ndarray"):
        retrieval.process_image([pil[0], np.zeros((4, 4, 3))])


def test_dir_lists_every_modality_and_signature_is_real(retrieval):
    names = dir(retrieval)
    for name in ("process_video", "extract_video_features", "process_audio", "ground", "answer", "verify"):
        assert name in names, name
    params = inspect.signature(from_pretrained).parameters
    assert list(params)[:3] == ["model_name_or_path", "model_type", "device"] and "modalities" in params
