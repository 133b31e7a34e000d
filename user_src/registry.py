"""Registers every ONE-PEACE task, criterion, model and architecture with fairseq.

Imported by the user dir (``--user-dir user_src``) and safe to import again as a
package: Python's module cache makes every registration happen exactly once.

Importing fairseq has side effects we undo: one of its modules calls
``logging.basicConfig(level=DEBUG)`` (hub users then see every library's debug lines), and
fairseq 0.12's config code triggers a screenful of hydra deprecation warnings on each start.
"""
import logging as _logging
import warnings as _warnings

_root = _logging.getLogger()
_saved = (_root.level, list(_root.handlers))
try:
    from .. import criterions as _criterions  # noqa: F401
    from .. import tasks as _tasks  # noqa: F401
    from ..fairseq_glue import compat as _compat  # noqa: F401
    from ..fairseq_glue import registration as _models  # noqa: F401
    from ..fairseq_glue import registration_av as _models_av  # noqa: F401
    from ..fairseq_glue import registration_seg as _models_seg  # noqa: F401
    from ..optim import adjust_adam as _adjust_adam  # noqa: F401
    from ..optim import lr_schedulers as _lr_schedulers  # noqa: F401
    from ..optim.common_config import extend_common_config as _extend_common_config

    _extend_common_config()  # the official common.layer_decay / common.no_bias_decay
finally:  # never change the caller's logging configuration
    _root.setLevel(_saved[0])
    _root.handlers[:] = _saved[1]

# Warnings from fairseq 0.12's own code on every start (nothing a user of ours can act on): its use
# of hydra's deprecated APIs, its torch.cuda.amp call, its pinned-memory loader on CPU-only machines.
for _message in (r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental",
                 r"\s*The version_base parameter is not specified",
                 r"In 'config': Usage of deprecated keyword in package header",
                 r"\s*'config' is validated against ConfigStore schema",
                 r"\s*The strict flag in the compose API is deprecated",
                 r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
                 r"'pin_memory' argument is set as true but no accelerator is found"):
    _warnings.filterwarnings("ignore", message=_message)

from .. import cli_errors as _cli_errors  # noqa: E402 - after the registrations above

_cli_errors.install()  # one 'error:' line instead of a traceback for user errors, in our command-line tools
