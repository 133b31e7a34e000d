"""ImageNet end to end on generated data: release layout -> converter -> fine-tuning through the run script
(tiny preset, mixup + cutmix on) -> evaluation through the run script; zero-shot classification from an
image-text checkpoint through the hub, the CLI and its run script."""
import pytest
import torch
from e2e_helpers import REPO, TINY, read_results, run, run_script_module, tiny_model
from test_image_classify import imagenet_release

from one_peace import from_pretrained


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = imagenet_release(tmp_path_factory.mktemp("release"))
    out = root / "imagenet"
    run_script_module("image_classify/convert_imagenet.py").main([
        "--train-dir", str(root / "train"), "--val-dir", str(root / "val"), "--val-labels",
        str(root / "LOC_val_solution.csv"), "--synsets", str(root / "LOC_synset_mapping.txt"), "--out-dir", str(out)])
    return out


def test_finetune_and_evaluate_scripts(imagenet, tmp_path):
    save_dir = tmp_path / "ckpt"
    env = dict(IMAGENET_DIR=str(imagenet), BATCH="2", UPDATE_FREQ="1", EPOCHS="1", SAVE_DIR=str(save_dir))
    log = run(["bash", str(REPO / "run_scripts/image_classify/finetune.sh"), tiny_model("image_classify/finetune.sh"),
               *TINY, "task.num_classes=3"], env, tmp_path)
    assert (save_dir / "checkpoint_best.pt").is_file(), log[-3000:]
    assert "top5" in log and "accuracy" in log  # validation during training reports both
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/image_classify/evaluate.sh"), "--cpu", "--model-overrides",
         f"{{'task': {{'label_file': '{imagenet / 'imagenet_label.json'}'}}}}"],
        dict(IMAGENET_DIR=str(imagenet), CHECKPOINT=str(save_dir / "checkpoint_best.pt"), RESULTS_DIR=str(results)),
        tmp_path)
    preds, metrics = read_results(results)
    assert 0 <= metrics["accuracy"] <= 100 and metrics["top5"] == 100.0  # 3 classes: always in the top 5
    assert len(preds) == 6 and [p["target"] for p in preds] == [1, 2, 0, 1, 2, 0]
    assert all(len(p["top5"]) == 3 and p["top5"][0] == p["prediction"] for p in preds)
    assert all(abs(sum(p["top5_probabilities"]) - 1) < 1e-4 for p in preds)
    assert preds[0]["prediction_name"] in ("tench", "goldfish", "great white shark")


@pytest.fixture(scope="module")
def hub(retrieval_checkpoint, fixture_bpe_dir):  # noqa: F811 - the imported fixture
    return from_pretrained(retrieval_checkpoint, model_type="one_peace_retrieval", device="cpu", dtype="float32",
                           bpe_dir=fixture_bpe_dir)


def val_images(imagenet):
    rows = (imagenet / "imagenet_val.tsv").read_text().splitlines()[1:]
    return [str(imagenet / r.split("\t")[0]) for r in rows], [int(r.split("\t")[1]) - 1 for r in rows]


def test_zero_shot_classifier_is_the_normalised_mean_of_normalised_prompts(hub):
    names, templates = ["red square", "dog"], ["a photo of a {}.", "art of the {}.", "{}"]
    got = hub.zero_shot_classifier(names, templates)
    for i, name in enumerate(names):
        prompts = hub.extract_text_features(hub.process_text([t.format(name) for t in templates]))
        want = torch.nn.functional.normalize(torch.nn.functional.normalize(prompts, dim=-1).mean(0), dim=0)
        assert torch.allclose(got[i], want, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))


def test_zero_shot_picks_the_class_whose_direction_is_the_image(hub, imagenet):
    """With each class embedding set to one image's own embedding, every image is its own class."""
    paths, _ = val_images(imagenet)
    own = hub.extract_image_features(hub.process_image(paths[:4]))
    names = [f"class {i}" for i in range(4)]
    results = hub.zero_shot_classify(paths[:4], names, classifier=own, k=3)
    assert [r["classes"][0] for r in results] == [0, 1, 2, 3]
    assert [r["labels"][0] for r in results] == names
    assert all(len(r["scores"]) == 3 and r["scores"] == sorted(r["scores"], reverse=True) for r in results)
    with pytest.raises(ValueError, match="classifier has 4 classes but 3"):
        hub.zero_shot_classify(paths[:1], names[:3], classifier=own)


def test_zero_shot_cli_and_script_agree_with_the_hub(hub, imagenet, retrieval_checkpoint, fixture_bpe_dir,  # noqa: F811
                                                    tmp_path):
    from one_peace.zero_shot_classify import main

    paths, targets = val_images(imagenet)
    # Words of the fixture's 252-symbol dictionary: the ImageNet names would all be <unk> (tied scores).
    names = ["people", "government", "market"]
    classes = tmp_path / "classes.tsv"
    classes.write_text("class\twnid\tname\n" + "".join(f"{i}\tn0{i}\t{n}\n" for i, n in enumerate(names)))
    expected = hub.zero_shot_classify(paths, names, templates="clip80", k=5)
    assert all(len(set(e["scores"])) == 3 for e in expected)  # no ties: the order is meaningful
    metrics = main(["--path", retrieval_checkpoint, "--data", str(imagenet / "imagenet_val.tsv"), "--class-names",
                    str(classes), "--templates", "clip80", "--cpu", "--bpe-dir",
                    fixture_bpe_dir, "--batch-size", "4", "--results-path", str(tmp_path / "cli")])
    preds, saved = read_results(tmp_path / "cli", "val")
    assert saved == metrics and metrics["count"] == 6 and metrics["top5"] == 100.0
    hits = sum(e["classes"][0] == t for e, t in zip(expected, targets))
    assert metrics["accuracy"] == pytest.approx(100 * hits / 6, abs=1e-3)
    for pred, want, target, path in zip(preds, expected, targets, paths):
        assert pred["top5"] == want["classes"] and pred["top5_labels"] == want["labels"]
        assert pred["top5_scores"] == pytest.approx(want["scores"], abs=1e-5)
        assert pred["target"] == target and pred["image"] == path and pred["prediction"] == want["classes"][0]
    run(["bash", str(REPO / "run_scripts/image_classify/zero_shot_evaluate.sh"), "--cpu"],
        dict(IMAGENET_DIR=str(imagenet), CLASS_NAMES=str(classes), CHECKPOINT=retrieval_checkpoint,
             BPE_DIR=fixture_bpe_dir, TEMPLATES="clip80", RESULTS_DIR=str(tmp_path / "script")), tmp_path)
    script_preds, script_metrics = read_results(tmp_path / "script", "val")
    assert script_metrics == saved
    for got, want in zip(script_preds, preds):
        assert got["top5"] == want["top5"] and got["top5_scores"] == pytest.approx(want["top5_scores"], abs=1e-5)


def test_zero_shot_bad_inputs_name_the_file(hub, imagenet, retrieval_checkpoint, fixture_bpe_dir,  # noqa: F811
                                            tmp_path):
    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.zero_shot_classify import main

    common = ["--path", retrieval_checkpoint, "--class-names", str(imagenet / "imagenet_classes.tsv"), "--cpu",
              "--bpe-dir", fixture_bpe_dir, "--data-root", str(imagenet)]
    lines = (imagenet / "imagenet_val.tsv").read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join([lines[0], lines[1], lines[2].split("\t")[0] + "\t9"]) + "\n")
    with pytest.raises(BadSampleError, match="bad.tsv, row 3: label 9 out of range"):
        main(common + ["--data", str(bad)])
    bad.write_text("\n".join([lines[0], lines[1], "gone.JPEG\t1"]) + "\n")
    with pytest.raises(BadSampleError, match="bad.tsv, row 3: image file not found: .*gone.JPEG"):
        main(common + ["--data", str(bad)])
    names = tmp_path / "names.tsv"
    names.write_text("class\twnid\n0\tn01440764\n")
    with pytest.raises(ValueError, match="names.tsv, line 1: expected a header with a 'name' column"):
        main(["--path", retrieval_checkpoint, "--data", str(imagenet / "imagenet_val.tsv"), "--class-names",
              str(names)])
    with pytest.raises(ValueError, match="zero-shot classification needs an image-text"):
        from_pretrained(str(REPO.parent / "shared/fixtures/official-parity-tasks/ckpt_image_classify.pt"),
                        model_type="one_peace_classify", device="cpu",
                        bpe_dir=fixture_bpe_dir).zero_shot_classify(lines[1].split("\t")[0], ["a"])
