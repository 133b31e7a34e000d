"""Training augmentations of NLVR2 and RefCOCO (data_utils/augment.py): applied in training only,
reproducible per (seed, epoch, sample), different across epochs, valid images in [0, 1]."""
import numpy as np
import torch
from PIL import Image

from one_peace.data_utils.augment import nlvr2_train_augment, refcoco_train_augment, sample_seed
from one_peace.data_utils.image import image_to_tensor


def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


def test_augmentations_are_seeded_per_sample_and_stay_valid():
    image = picture()
    plain = image_to_tensor(image, 32)
    for augment in (nlvr2_train_augment(), refcoco_train_augment()):
        seeds = [sample_seed(1, epoch, 0) for epoch in range(1, 9)]
        outs = [image_to_tensor(image, 32, augment, s) for s in seeds]
        assert torch.equal(outs[0], image_to_tensor(image, 32, augment, seeds[0]))  # reproducible
        assert any(not torch.equal(o, plain) for o in outs)  # applied
        assert len({o.sum().item() for o in outs}) > 1  # varies with the epoch
        assert all(torch.isfinite(o).all() and o.shape == plain.shape for o in outs)


def test_training_split_only(tmp_path, fixture_bpe_dir, user_dir):
    from omegaconf import OmegaConf

    from one_peace.tasks.vl_tasks.nlvr2 import NLVR2Config, NLVR2Task

    picture().save(tmp_path / "a.png")
    picture().transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "b.png")
    rows = ["uniq_id\ttext\timage1\timage2\tlabel"] + [
        f"{i}\ttwo dogs\t{tmp_path / 'a.png'}\t{tmp_path / 'b.png'}\tTrue" for i in range(4)]
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    task = NLVR2Task.setup_task(OmegaConf.structured(NLVR2Config(
        bpe_dir=fixture_bpe_dir, data=str(tmp_path / "d.tsv"), valid_data=str(tmp_path / "d.tsv"),
        patch_image_size=32)))
    task.load_dataset("train")
    task.load_dataset("valid")
    plain = image_to_tensor(picture(), 32)
    assert all(torch.equal(task.datasets["valid"][i]["source_image"], plain) for i in range(4))
    train = [task.datasets["train"][i]["source_image"] for i in range(4)]
    assert any(not torch.equal(t, plain) for t in train)
