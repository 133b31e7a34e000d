"""Registers every ONE-PEACE task, criterion, model and architecture with fairseq.

Imported by the user dir (``--user-dir user_src``) and safe to import again as a
package: Python's module cache makes every registration happen exactly once.
"""
from . import criterions as _criterions  # noqa: F401
from . import fairseq_compat as _compat  # noqa: F401
from . import tasks as _tasks  # noqa: F401
from .models import registration as _models  # noqa: F401
from .models import registration_av as _models_av  # noqa: F401
