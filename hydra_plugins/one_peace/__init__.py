"""Hydra imports every ``hydra_plugins`` module when it starts, before it composes the yaml:
inside ``fairseq-hydra-train`` this adds the official ``common.layer_decay`` /
``common.no_bias_decay`` fields to fairseq's schema (``one_peace/optim/common_config.py``).
Other Hydra applications (fairseq not imported) are left alone."""
import sys

if "fairseq.dataclass.configs" in sys.modules:
    from one_peace.optim.common_config import extend_common_config

    extend_common_config()
