"""A checkpoint state read by our code (a memory-mapped file, a model directory, a sharded directory)
made what fairseq's ``load_checkpoint_to_cpu`` returns; shared by ``compat.py`` and ``fsdp2.py``."""
from fairseq import checkpoint_utils
from fairseq.dataclass.utils import overwrite_args_by_name
from omegaconf import OmegaConf


def prepare_state(state: dict, arg_overrides=None) -> dict:
    """What fairseq's ``load_checkpoint_to_cpu`` does after reading the file: apply overrides to
    the saved args/cfg (cfg as an OmegaConf object) and run the state upgrades."""
    if state.get("args") is not None and arg_overrides is not None:
        for name, value in arg_overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            overwrite_args_by_name(state["cfg"], arg_overrides)
    return checkpoint_utils._upgrade_state_dict(state)
