"""``one-peace-hydra-train``: ``fairseq-hydra-train`` with the plugin in place before fairseq reads its config.

* ``common.layer_decay`` / ``common.no_bias_decay`` in fairseq's schema (``optim/common_config.py``):
  stock ``fairseq-hydra-train`` gets them from the Hydra plugin, which Hydra only finds in a regular
  install (its plugin scan cannot list modules through setuptools' editable-install finder).
* The fairseq shims (``fairseq_glue/compat.py``): the hydra front end imports ``common.user_dir`` only
  after it has set up distributed training, so shims that act there (torchrun without GPUs) would come
  too late.
"""
from ..optim.common_config import extend_common_config
from . import compat


def main() -> None:
    extend_common_config()
    compat.install()
    from fairseq_cli.hydra_train import cli_main

    cli_main()
