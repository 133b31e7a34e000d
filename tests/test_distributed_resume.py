"""Resuming a multi-process DDP run: rank 0 reads the checkpoint and broadcasts it (fairseq's default).

fairseq 0.12 unpickles the broadcast state on the other ranks with ``torch.load``'s ``weights_only``
default, which refuses the saved config: without the shim every rank but 0 crashes on resume."""
from fsdp2_runs import losses, pretrain_config, train, weights
from helpers import BPE_ASSETS

from one_peace.data_utils import synthetic


def test_a_two_rank_ddp_run_resumes_from_rank_0s_broadcast(tmp_path):
    synthetic.write_image_split(str(tmp_path / "data"), "train", 8, seed=5)
    synthetic.write_image_split(str(tmp_path / "data"), "valid", 4, seed=5)
    config = pretrain_config(tmp_path / "data", BPE_ASSETS, batch_size=2, max_update=1)
    save_dir = tmp_path / "ckpt"
    train(tmp_path / "first", config, save_dir, 2, "distributed_training.ddp_backend=legacy_ddp")
    first = weights(save_dir / "checkpoint_last.pt")
    config["optimization"]["max_update"] = 2
    logs = train(tmp_path / "resumed", config, save_dir, 2, "distributed_training.ddp_backend=legacy_ddp")
    assert "Loaded checkpoint" in logs[0] and sorted(losses(logs[0])) == [2], logs[0][-3000:]
    assert "Traceback" not in logs[1], logs[1][-3000:]
    resumed = weights(save_dir / "checkpoint_last.pt")
    assert any((resumed[k] != first[k]).any() for k in first if first[k].is_floating_point())  # it trained on
