"""Cross-modal contrast across workers equals the single-process computation.

Two CPU processes (gloo) each hold part of the global batch; fairseq averages the
workers' gradients (each worker's loss is a mean over its rows).  The loss averaged
over workers (weighted by rows) and the averaged gradients must equal one process
holding the whole batch -- also when the workers hold different batch sizes.
"""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import FIXTURES, assert_scaled_close, load_fixture, scaled_error
from omegaconf import OmegaConf

SPLITS = {"equal": (0, 2, 4), "unequal": (0, 1, 4)}  # rows [a, b) on rank 0, [b, c) on rank 1


def build_model():
    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.checkpoint import load_into

    cfg = json.loads((FIXTURES / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    model = OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256)
    return load_into(model, load_fixture("pretrain_state_dict.pt")).eval()


def batch():
    inputs = load_fixture("inputs.pt")
    tokens = torch.cat([inputs["src_tokens"], inputs["src_tokens"][:1].flip(0)])  # 4 samples
    images = torch.cat([inputs["src_images"], inputs["src_images"][2:].flip(-1)])
    return tokens, images


def contrast_step(model, tokens, images):
    from one_peace.criterions.contrastive import cross_modal_contrast

    text_emb, _ = model(src_tokens=tokens, encoder_type="text")
    image_emb, _ = model(src_images=images, encoder_type="image")
    loss, _, _ = cross_modal_contrast(image_emb, text_emb, model(return_logit_scale=True))
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def perturb_gathered_row():
    """Make the gathered negatives wrong in one row (the other worker's first), by 1e-3."""
    import one_peace.criterions.contrastive as contrastive

    original = contrastive.gather_with_offsets

    def gather(local):
        gathered, offset = original(local)
        other = 0 if offset > 0 else local.size(0)
        gathered = gathered.clone()
        gathered[other] += 1e-3
        return gathered, offset

    contrastive.gather_with_offsets = gather


def worker(rank, port, split, out_dir, perturb=False):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if perturb:
            perturb_gathered_row()
        torch.manual_seed(0)
        model = build_model()
        tokens, images = batch()
        start, end = SPLITS[split][rank], SPLITS[split][rank + 1]
        loss, grads = contrast_step(model, tokens[start:end], images[start:end])
        # Weight by local rows so the result is the mean over the global batch.
        rows, total = end - start, SPLITS[split][2]
        weighted_loss = loss * rows / total
        dist.all_reduce(weighted_loss)
        for g in grads.values():
            g.mul_(rows / total)
            dist.all_reduce(g)
        if rank == 0:
            torch.save({"loss": weighted_loss, "grads": grads}, os.path.join(out_dir, "dist.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("split", ["equal", "unequal"])
def test_two_workers_equal_one_process(tmp_path, split):
    mp.spawn(worker, args=(free_port(), split, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "dist.pt", weights_only=True)
    tokens, images = batch()
    loss, grads = contrast_step(build_model(), tokens, images)
    assert_scaled_close(result["loss"], loss, rel=1e-6, msg="loss")
    assert result["grads"].keys() == grads.keys()
    for name, grad in grads.items():
        # float32 sums run in another order on 2 workers (and on other CPU types): scale-aware.
        assert_scaled_close(result["grads"][name], grad, rel=RTOL, msg=name)


RTOL = 1e-5


def test_tolerance_catches_one_wrong_negative(tmp_path):
    """The tolerance above is tight enough: one gathered negative off by 1e-3 fails it."""
    mp.spawn(worker, args=(free_port(), "equal", str(tmp_path), True), nprocs=2, join=True)
    result = torch.load(tmp_path / "dist.pt", weights_only=True)
    tokens, images = batch()
    _, grads = contrast_step(build_model(), tokens, images)
    worst = max(scaled_error(result["grads"][name], grad) for name, grad in grads.items())
    assert worst > 10 * RTOL
