"""The evaluation protocol ``one-peace-evaluate`` drives (fairseq-generate style).

A task that can be evaluated implements these three methods; the classification and
retrieval bases (``tasks/classification.py``, ``tasks/retrieval.py``) do, so every benchmark
built on them is evaluable.  The pretraining tasks are not (they have no split metric).
"""
from typing import Any, Dict, List, Protocol, Tuple, runtime_checkable


@runtime_checkable
class EvaluationProtocol(Protocol):
    def begin_valid_epoch(self, epoch: int, model) -> None:
        """Prepare split-level state before the first batch (e.g. embed every caption)."""

    def eval_step(self, model, sample) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """(logging output for :meth:`reduce_split_metrics`, one prediction dict per row)."""

    def reduce_split_metrics(self, logging_outputs: List[Dict[str, Any]]) -> None:
        """Log the split's metrics (in percent) into fairseq's active aggregator."""


def is_evaluable(task_or_class) -> bool:
    """A task (or task class) that implements the protocol."""
    return all(callable(getattr(task_or_class, name, None)) for name in ("eval_step", "reduce_split_metrics"))


def zero_shot_tasks() -> List[str]:
    """Registered tasks that ``--zero-shot`` evaluates an embedding checkpoint on (the retrieval tasks,
    which name the model they build from it: ``ZERO_SHOT_MODEL``)."""
    from fairseq.tasks import TASK_REGISTRY

    return sorted(name for name, cls in TASK_REGISTRY.items() if getattr(cls, "ZERO_SHOT_MODEL", None))


def zero_shot_hint() -> str:
    names = zero_shot_tasks()
    return f"--zero-shot --task {names[0]}" + (f" (or {', '.join(names[1:])})" if names[1:] else "")


def require_evaluable(task) -> EvaluationProtocol:
    if not isinstance(task, EvaluationProtocol):
        name = getattr(getattr(task, "cfg", None), "_name", type(task).__name__)
        raise ValueError(
            f"task {name!r} cannot be evaluated: it implements no eval_step/reduce_split_metrics "
            "(tasks/evaluation.py). Pretraining checkpoints are evaluated zero-shot on a retrieval task: "
            f"{zero_shot_hint()}")
    return task
