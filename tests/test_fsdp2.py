"""FSDP2 (``--ddp-backend fully_sharded``, ``models/fsdp2.py``, ``fairseq_glue/fsdp2.py``) on 2 gloo ranks.

* ``fairseq-hydra-train`` with FSDP2 gives DDP's losses and updated weights (tiny pretraining model, adjust_adam
  with layer decay); its checkpoint is a sharded directory the hub, the export command and a DDP run read.
* Stage-2 pretraining from the stage-1 checkpoint (image branch dropped, all but the audio branch frozen) and
  fine-tuning (the VGGSound run script, slow) give DDP's losses and weights under FSDP2 too.
* Activation checkpointing under FSDP2 changes nothing; ``--bf16`` under FSDP2 trains (slow).
* ``bench/fsdp2_plan.py`` (the FSDP2 tables of ``docs/SCALING.md``) counts as FSDP2 shards.
* The torchrun command lines of ``docs/SCALING.md`` (the run scripts' ``NUM_GPUS``; one node and two
  nodes, slow) train as the gloo ranks do.
* Resume across backends (FSDP2 -> FSDP2, DDP -> FSDP2, FSDP2 -> DDP) ends where DDP uninterrupted does (slow).
* Per-rank bytes of parameters, gradients and Adam state are half of one unsharded copy; a save that dies after
  writing shards leaves the previous checkpoint loadable.
"""
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fsdp2_runs import (
    finetune,
    free_port,
    losses,
    max_abs_difference,
    max_difference,
    pretrain_config,
    share_differing,
    torchrun,
    train,
    weights,
)
from helpers import BPE_ASSETS

from one_peace.data_utils import synthetic

TOL = 1e-5  # float32 sums of two ranks in another order
LR = 1e-3  # pretrain_config's


def assert_trained_alike(a: dict, b: dict):
    """Weights of two runs that differ only in float order.  The fused Adam kernel (optim/fused_adam.py)
    rounds per element as its own code does, so float sums of the two ranks in another order (and, in stage 2,
    the audio conv stack's CPU weight gradients, which come out in another order when the weight is FSDP2's
    gathered copy) reach the weights; Adam's lr * m / (sqrt(v) + eps) then turns the sign of a gradient element
    that cancels to ~0 into a whole step either way.  Measured in stage 1: 997 of 3.6 M elements beyond 1e-6,
    the largest 4.7e-5, the mean 1e-9; after 5 updates from the two backends' checkpoints, 0.13%.  So: under 1%
    of the elements, each within one step (a wrong update -- a missed group, another lr -- moves them all)."""
    assert max_abs_difference(a, b) <= LR
    assert share_differing(a, b, 1e-6) <= 1e-2


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """3 updates of stage-1 pretraining on 2 ranks, with DDP (legacy_ddp, as the yamls) and with FSDP2."""
    root = tmp_path_factory.mktemp("fsdp2")
    synthetic.write_image_split(str(root / "data"), "train", 16, seed=5)
    synthetic.write_image_split(str(root / "data"), "valid", 4, seed=5)
    config = pretrain_config(root / "data", BPE_ASSETS, batch_size=2)
    runs = {}
    for backend in ("legacy_ddp", "fully_sharded"):
        logs = train(root / backend, config, root / backend / "ckpt", 2, f"distributed_training.ddp_backend={backend}")
        runs[backend] = (logs, root / backend / "ckpt" / "checkpoint_last.pt")
    return root, config, runs


def test_fsdp2_trains_as_ddp_and_its_checkpoint_loads_everywhere(stage1, tmp_path):
    _, _, runs = stage1
    (ddp_logs, ddp_ckpt), (fsdp_logs, fsdp_ckpt) = runs["legacy_ddp"], runs["fully_sharded"]
    assert "FSDP2: FSDPOnePeacePretrain sharded over 2 ranks" in fsdp_logs[0]
    assert "adjust_adam: 8 parameter groups" in fsdp_logs[0]  # the layer-decay tags survived the sharding
    ddp_losses, fsdp_losses = losses(ddp_logs[0]), losses(fsdp_logs[0])
    assert sorted(fsdp_losses) == [1, 2, 3] and len(set(fsdp_losses.values())) > 1
    assert fsdp_losses == pytest.approx(ddp_losses, rel=TOL)

    assert ddp_ckpt.is_file() and (fsdp_ckpt / ".metadata").is_file() and (fsdp_ckpt / "fairseq_state.pt").is_file()
    assert sorted(p.name for p in fsdp_ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    ddp_weights, fsdp_weights = weights(ddp_ckpt), weights(fsdp_ckpt)
    assert_trained_alike(fsdp_weights, ddp_weights)

    # The hub reads the directory as it reads the .pt: the same embeddings (up to the weights' differences
    # above) -- and exactly the directory's weights.
    from one_peace import from_pretrained

    texts = ["a red square", "two circles"]
    hubs = [from_pretrained(str(c), device="cpu", bpe_dir=str(BPE_ASSETS)) for c in (fsdp_ckpt, ddp_ckpt)]
    vectors = [hub.extract_text_features(hub.process_text(texts)) for hub in hubs]
    assert torch.allclose(vectors[0], vectors[1], atol=1e-3)
    hub_weights = hubs[0].model.state_dict()
    shared = [k for k in fsdp_weights if k in hub_weights]
    assert len(shared) > 10 and all(torch.equal(hub_weights[k], fsdp_weights[k]) for k in shared)

    # one-peace-evaluate takes the directory as --path and reads its saved config: a pretraining
    # checkpoint is then refused for what it is (not as a missing file)
    from one_peace.evaluate import run_cli

    root = stage1[0]
    with pytest.raises(ValueError, match=r"'image_text_pretrain' cannot be evaluated"):
        run_cli(["--path", str(fsdp_ckpt), "--gen-subset", "valid", "--valid-data",
                 str(root / "data" / "image_text_valid.tsv"), "--bpe-dir", str(BPE_ASSETS), "--cpu"])

    # The export command writes the official single file.
    out = tmp_path / "exported.pt"
    proc = subprocess.run([sys.executable, "-m", "one_peace.models.sharded_checkpoint", str(fsdp_ckpt), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = torch.load(out, map_location="cpu", weights_only=False)
    assert exported["cfg"]["distributed_training"]["ddp_backend"] == "fully_sharded"
    assert exported["optimizer_history"][-1]["num_updates"] == 3 and "last_optimizer_state" not in exported
    assert max_difference(dict(exported["model"]), weights(fsdp_ckpt)) == 0.0
    bad = subprocess.run([sys.executable, "-m", "one_peace.models.sharded_checkpoint", str(tmp_path), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and f"{tmp_path} has no .metadata" in bad.stderr


def test_stage2_from_stage1_trains_as_ddp_with_the_freezing(stage1):
    root, _, runs = stage1
    synthetic.write_audio_split(str(root / "audio"), "train", 8, seed=5)
    finals, run_losses = {}, {}
    for backend in ("legacy_ddp", "fully_sharded"):
        config = pretrain_config(root / "audio", BPE_ASSETS, stage2=runs[backend][1], batch_size=2, max_update=2)
        save_dir = root / "stage2" / backend / "ckpt"
        logs = train(root / "stage2" / backend, config, save_dir, 2, f"distributed_training.ddp_backend={backend}")
        run_losses[backend] = losses(logs[0])
        finals[backend] = weights(save_dir / "checkpoint_last.pt")
    assert sorted(run_losses["fully_sharded"]) == [1, 2]
    assert run_losses["fully_sharded"] == pytest.approx(run_losses["legacy_ddp"], rel=TOL)
    assert_trained_alike(finals["fully_sharded"], finals["legacy_ddp"])
    stage1_weights = weights(runs["fully_sharded"][1])
    final = finals["fully_sharded"]
    assert not any("image_adapter" in k for k in final)  # the image branch was dropped
    trained = [k for k in final if ".audio_" in k or "audio_adapter" in k]
    frozen = [k for k in final if k.startswith("encoder_wrapper.") and k not in trained and k in stage1_weights]
    assert trained and frozen
    assert all(torch.equal(final[k], stage1_weights[k]) for k in frozen)  # the stage-2 freezing held
    assert any(not torch.equal(final[k], stage1_weights.get(k, torch.zeros(()))) for k in trained)


def _finetune_data(tmp_path):
    from audio_bench_data import make_audio_data

    (tmp_path / "data").mkdir()
    return make_audio_data(tmp_path / "data")


def _finetune_with_torchrun(tmp_path, data):
    """The run script's NUM_GPUS=2 path (torchrun --nproc_per_node=2, docs/SCALING.md) with FSDP2."""
    save_dir = tmp_path / "torchrun" / "ckpt"
    logs = finetune(tmp_path / "torchrun", data["vgg"], save_dir, 1, "distributed_training.ddp_backend=fully_sharded",
                    "common.log_format=json", num_gpus=2)
    assert "sharded over 2 ranks" in logs[0]
    assert sorted(p.name for p in (save_dir / "checkpoint_last.pt").glob("*.distcp")) == ["__0_0.distcp",
                                                                                         "__1_0.distcp"]
    return losses(logs[0]), weights(save_dir / "checkpoint_last.pt")


def test_run_scripts_num_gpus_launch_fine_tunes_with_fsdp2(tmp_path):
    run_losses, _ = _finetune_with_torchrun(tmp_path, _finetune_data(tmp_path))
    assert sorted(run_losses) == [1, 2] and all(map(math.isfinite, run_losses.values()))


@pytest.mark.slow
def test_finetuning_trains_as_ddp(tmp_path):
    data = _finetune_data(tmp_path)
    finals, run_losses = {}, {}
    for backend in ("legacy_ddp", "fully_sharded"):
        save_dir = tmp_path / backend / "ckpt"
        logs = finetune(tmp_path / backend, data["vgg"], save_dir, 2, f"distributed_training.ddp_backend={backend}",
                        "common.log_format=json")
        assert ("sharded over 2 ranks" in logs[0]) == (backend == "fully_sharded")
        run_losses[backend] = losses(logs[0])
        finals[backend] = weights(save_dir / "checkpoint_last.pt")
    assert sorted(run_losses["fully_sharded"]) == [1, 2]
    assert run_losses["fully_sharded"] == pytest.approx(run_losses["legacy_ddp"], rel=TOL)
    assert_trained_alike(finals["fully_sharded"], finals["legacy_ddp"])
    # torchrun (the run script's NUM_GPUS=2) trains as the two processes with fairseq's flags
    torchrun_losses, torchrun_weights = _finetune_with_torchrun(tmp_path, data)
    assert torchrun_losses == pytest.approx(run_losses["fully_sharded"], rel=TOL)
    assert max_difference(torchrun_weights, finals["fully_sharded"]) <= TOL


@pytest.mark.slow
def test_activation_checkpointing_changes_nothing_and_bf16_trains(stage1):
    root, config, runs = stage1
    save_dir = root / "checkpointed" / "ckpt"
    checkpointed = pretrain_config(root / "data", BPE_ASSETS, batch_size=2, checkpoint_activations=True)
    logs = train(root / "checkpointed", checkpointed, save_dir, 2, "distributed_training.ddp_backend=fully_sharded")
    assert losses(logs[0]) == pytest.approx(losses(runs["fully_sharded"][0][0]), rel=TOL)
    assert max_difference(weights(save_dir / "checkpoint_last.pt"), weights(runs["fully_sharded"][1])) <= TOL

    bf16 = {**config, "common": {**config["common"], "bf16": True}}
    logs = train(root / "bf16", bf16, root / "bf16" / "ckpt", 2, "distributed_training.ddp_backend=fully_sharded")
    assert "compute in bf16" in logs[0]
    bf16_losses = losses(logs[0])
    assert sorted(bf16_losses) == [1, 2, 3] and all(map(math.isfinite, bf16_losses.values()))
    # close to the fp32 run: bf16 rounding, not another computation
    assert bf16_losses[1] == pytest.approx(losses(runs["fully_sharded"][0][0])[1], rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [1, 2])
def test_documented_torchrun_lines_train_as_the_gloo_ranks(stage1, nodes):
    """docs/SCALING.md's torchrun lines at 2 processes: one node, and two nodes (--nnodes=2 --node_rank=0/1)."""
    root, config, runs = stage1
    save_dir = root / f"torchrun{nodes}" / "ckpt"
    logs = torchrun(root / f"torchrun{nodes}", config, save_dir, nodes, "distributed_training.ddp_backend=fully_sharded")
    log = "".join(logs)
    assert "sharded over 2 ranks" in log
    assert sorted(p.name for p in (save_dir / "checkpoint_last.pt").glob("*.distcp")) == ["__0_0.distcp",
                                                                                         "__1_0.distcp"]
    assert losses(log) == pytest.approx(losses(runs["fully_sharded"][0][0]), rel=TOL)
    assert max_difference(weights(save_dir / "checkpoint_last.pt"), weights(runs["fully_sharded"][1])) <= TOL


@pytest.mark.slow
def test_resume_across_backends_ends_where_ddp_does(stage1):
    root, config, runs = stage1
    config = {**config, "optimization": {**config["optimization"], "max_update": 5}}
    finals = {}
    for name, (source, backend) in {"ddp_to_ddp": ("legacy_ddp", "legacy_ddp"),
                                    "fsdp2_to_fsdp2": ("fully_sharded", "fully_sharded"),
                                    "ddp_to_fsdp2": ("legacy_ddp", "fully_sharded"),
                                    "fsdp2_to_ddp": ("fully_sharded", "legacy_ddp")}.items():
        save_dir = root / "resume" / name / "ckpt"
        save_dir.mkdir(parents=True)
        copy = shutil.copytree if runs[source][1].is_dir() else shutil.copy
        copy(runs[source][1], save_dir / "checkpoint_last.pt")
        # every rank reads the file (FSDP2 always does): fairseq's broadcast from rank 0 unpickles the saved cfg
        # with torch.load's weights_only default on the other ranks, which refuses it (fairseq 0.12, any backend)
        logs = train(root / "resume" / name, config, save_dir, 2, f"distributed_training.ddp_backend={backend}",
                     "checkpoint.load_checkpoint_on_all_dp_ranks=true")
        assert "Loaded checkpoint" in logs[0] and sorted(losses(logs[0])) == [4, 5], logs[0][-3000:]
        finals[name] = weights(save_dir / "checkpoint_last.pt")
    for final in finals.values():  # from the DDP or the FSDP2 stage-1 checkpoint: trained alike
        assert_trained_alike(final, finals["ddp_to_ddp"])


# ---- in-process: memory per rank, atomic saves, resharding ----------------------------------------------
def _tiny_model():
    from omegaconf import OmegaConf

    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.architectures import PRESETS, apply_preset
    from one_peace.models.config import OnePeacePretrainConfig

    cfg = OmegaConf.structured(OnePeacePretrainConfig)
    apply_preset(cfg, PRESETS["tiny"], OnePeacePretrainConfig())
    torch.manual_seed(0)
    return OnePeacePretrainModel(cfg, vocab_size=64)


def _step(model, optimizer):
    tokens = torch.randint(4, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    emb, _ = model(src_tokens=tokens, encoder_type="text")
    (emb.float().square().sum() + model(return_logit_scale=True).float()).backward()
    for p in model.parameters():  # unused branches get zero gradients, as fairseq's legacy_ddp and FSDP2 here
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer.step()


def _worker(rank, port, out, fail_after_shards):
    from one_peace.models import sharded_checkpoint as sharded
    from one_peace.models.fsdp2 import device_mesh, shard_model, training_state_bytes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        whole = _tiny_model()
        optimizer = torch.optim.Adam(whole.parameters(), lr=1e-3)
        _step(whole, optimizer)
        unsharded = training_state_bytes(whole, optimizer)
        model = shard_model(_tiny_model(), device_mesh("cpu"))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        _step(model, optimizer)
        per_rank = training_state_bytes(model, optimizer)
        directory = os.path.join(out, "checkpoint_last.pt")
        sharded.save(directory, model, optimizer, {"cfg": None, "step": 1})
        _step(model, optimizer)
        if fail_after_shards:  # rank 0 dies after every shard and DCP's .metadata were written, before the swap
            def killed(*args):
                raise RuntimeError("killed mid-save")

            saved = sharded._swap_in, sharded._barrier
            sharded._swap_in, sharded._barrier = killed, (lambda: None)  # rank 1 does not wait for the dead rank
            try:
                if rank == 0:
                    with pytest.raises(RuntimeError, match="killed mid-save"):
                        sharded.save(directory, model, optimizer, {"cfg": None, "step": 2})
                else:
                    sharded.save(directory, model, optimizer, {"cfg": None, "step": 2})
            finally:
                sharded._swap_in, sharded._barrier = saved
        if rank == 0:
            torch.save({"unsharded": unsharded, "per_rank": per_rank}, os.path.join(out, "bytes.pt"))
    finally:
        dist.destroy_process_group()


def test_per_rank_state_is_half_and_an_interrupted_save_keeps_the_last(tmp_path):
    from one_peace.models import sharded_checkpoint as sharded

    mp.spawn(_worker, args=(free_port(), str(tmp_path), True), nprocs=2, join=True)
    measured = torch.load(tmp_path / "bytes.pt", weights_only=True)
    for part in ("params", "grads", "optimizer"):
        # dim-0 shards of 2 ranks, padded; the 0-d logit_scale is kept whole on both
        assert measured["per_rank"][part] / measured["unsharded"][part] == pytest.approx(0.5, abs=0.01), part
    directory = tmp_path / "checkpoint_last.pt"
    assert (tmp_path / "checkpoint_last.pt.partial" / ".metadata").is_file()  # the killed save's shards
    state = sharded.consolidate(str(directory), optimizer=True)
    assert state["step"] == 1  # the previous checkpoint, whole
    model = _tiny_model()
    missing = set(model.state_dict()) - set(state["model"])
    assert not missing, sorted(missing)[:5]
    assert {g["lr"] for g in state["last_optimizer_state"]["param_groups"]} == {1e-3}


def test_fsdp2_plan_counts_frozen_parameters_without_gradients_or_adam_state():
    """bench/fsdp2_plan.py (docs/SCALING.md's FSDP2 tables): shards scale as 1/N; frozen weights have no state."""
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("fsdp2_plan", REPO / "bench" / "fsdp2_plan.py")
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    stage1 = plan.unit_sizes(plan.pretrain_model(("image",), ()))
    stage2 = plan.unit_sizes(plan.pretrain_model(("audio",), ("audio",)))
    assert stage1[1] == stage1[0] and 0 < stage2[1] < stage2[0] / 2  # stage 2 trains the audio branch only
    per_param = {"params": 2.0, "grads": 2.0, "optimizer": 4.0}  # per rank over 2 (the measured figures)
    assert plan.per_gpu_state(stage1, per_param, 1) == 16 * stage1[0]
    eight = plan.per_gpu_state(stage1, per_param, 8)
    gathered = 2 * (stage1[3] + 2 * stage1[2]) + 4 * (stage1[3] + stage1[2])
    assert eight == pytest.approx(2 * stage1[0] + gathered)
    assert plan.per_gpu_state(stage2, per_param, 8) < eight
    assert plan.pretrain_tokens("video") > plan.pretrain_tokens("stage2") > plan.pretrain_tokens("stage1")
