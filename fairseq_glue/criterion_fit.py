"""Which criterion can train which task, checked when fairseq builds the criterion.

fairseq builds a criterion with its task (``task.build_criterion(cfg)`` -> ``Criterion(task, ...)``).  A
criterion that does not fit the task used to fail at the first batch, deep inside (``KeyError:
'src_audios'`` for ``--task image_text_pretrain --criterion audio_text_pretrain_loss``).  Each ONE-PEACE
criterion now says what it needs of its task in terms of the task's attributes (``fits_task``; the
criteria import no task module) and a mismatch is one error naming both and the criteria that fit:

* ``TARGET`` -- what a batch's targets are: ``single`` / ``soft`` / ``multi`` (``classify_criterion``),
  ``choice`` (``hinge_loss``), ``box`` (``refcoco_criterion``), ``pixels`` (``segmentation_criterion``);
* ``QUERY_MODALITY`` -- a retrieval task (the ``*_text_retrieval_criterion`` criteria);
* ``PRETRAIN_MODALITY`` -- the pretraining task of one modality (``<modality>_text_pretrain_loss``).

Our tasks refuse a criterion that is not ours (fairseq's ``cross_entropy`` ...) the same way
(``BaseTask.build_criterion``).
"""
from typing import List

from fairseq.criterions import CRITERION_REGISTRY, FairseqCriterion
from fairseq.tasks import TASK_REGISTRY


def task_name(task) -> str:
    name = getattr(getattr(task, "cfg", None), "_name", None)
    registered = [key for key, cls in TASK_REGISTRY.items() if cls is type(task)]
    return str(name or (registered[0] if registered else type(task).__name__))


def criterion_name(criterion_class) -> str:
    names = [name for name, cls in CRITERION_REGISTRY.items() if cls is criterion_class]
    return names[0] if names else criterion_class.__name__


def fitting_criteria(task) -> List[str]:
    """Registered criteria that can train ``task``, by name."""
    return sorted(name for name, cls in CRITERION_REGISTRY.items()
                  if callable(getattr(cls, "fits_task", None)) and cls.fits_task(task))


def require_fit(criterion_class, task, name: str = None) -> None:
    """A ValueError naming the criterion, the task and the criteria that fit it, unless the criterion fits."""
    fits = getattr(criterion_class, "fits_task", None)
    if callable(fits) and fits(task):
        return
    name = name or criterion_name(criterion_class)
    needs = getattr(criterion_class, "TASK_NEEDED", None)
    why = (f"it needs {needs}" if needs
           else "it is not a ONE-PEACE criterion (the batches of our tasks are not the ones it reads)")
    fitting = fitting_criteria(task)
    advice = (f"use --criterion {' or '.join(fitting)}" if fitting
              else "no ONE-PEACE criterion trains it (pretraining and fine-tuning tasks have one)")
    raise ValueError(f"criterion {name} cannot train task {task_name(task)}: {why}; for task {task_name(task)} {advice}")


class TaskFittingCriterion(FairseqCriterion):
    """A criterion that checks its task when built; subclasses set ``TASK_NEEDED`` and ``fits_task``.

    ``task=None`` (a criterion used for its loss alone, in tests and benchmarks) is not checked."""

    TASK_NEEDED = ""  # what it needs of its task, for the error

    def __init__(self, task):
        super().__init__(task)
        if task is not None:
            require_fit(type(self), task)

    @classmethod
    def fits_task(cls, task) -> bool:
        raise NotImplementedError


def task_target_is(*kinds):
    """``fits_task`` for criteria of batches whose targets are one of ``kinds`` (the task's ``TARGET``)."""
    def fits_task(cls, task) -> bool:
        return getattr(task, "TARGET", None) in kinds

    return classmethod(fits_task)
