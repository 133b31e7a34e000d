"""``adjust_cosine`` and ``adjust_polynomial_decay``: fairseq's schedules plus ``warmup_ratio``.

The official fine-tuning configs set ``max_epoch`` and ``max_update: 0``; the official train.py
then counts the updates of the whole run from the epoch length and calls ``reinit(total, n)``:
warmup = ``int(total * warmup_ratio)`` updates, the decay spans the rest.  Stock fairseq's loop
does not, so the schedulers do it themselves at the start of each epoch (``step_begin_epoch``,
which fairseq calls before the epoch's first update).  Each scheduler is told the number of batches
each worker gets per epoch through :meth:`_RatioScheduler.set_epoch_length` (instance state: fairseq's
trainer passes the length of the epoch iterator it just built, ``fairseq_glue/compat.py``), and the
total is ``max_epoch * ceil(batches / update_freq)``, capped by ``max_update`` when that is set too.
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


def total_updates(max_epoch: int, max_update: int, update_freq: int,
                  batches_per_worker: Optional[int]) -> int:
    """Updates of the whole run (what the official train.py passes to ``reinit``)."""
    by_epochs = None
    if max_epoch and max_epoch > 0 and batches_per_worker is not None:
        by_epochs = max_epoch * math.ceil(batches_per_worker / update_freq)
    candidates = [n for n in (by_epochs, max_update if max_update and max_update > 0 else None) if n]
    if not candidates:
        raise ValueError("warmup_ratio needs the length of the run: set optimization.max_epoch "
                         "(the epoch length comes from the trainer's epoch iterator) or optimization.max_update")
    return min(candidates)


@dataclass
class _RatioConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warmup updates (replaced when warmup_ratio > 0)"})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "warmup = int(total updates * warmup_ratio), total from max_epoch and the epoch length"})
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    update_freq: List[int] = II("optimization.update_freq")


class _RatioScheduler(FairseqLRScheduler):
    """Re-initialises the schedule from the run's length when ``warmup_ratio > 0``."""

    total_for_reinit: Optional[int] = None  # the total of the last reinit
    epoch_length: Optional[int] = None  # batches per worker in an epoch (set_epoch_length)

    def set_epoch_length(self, batches_per_worker: int) -> None:
        """The number of batches each worker gets per training epoch (the length of the epoch iterator);
        called before ``step_begin_epoch`` of every epoch."""
        if batches_per_worker is None or int(batches_per_worker) < 0:
            raise ValueError(f"epoch length must be a number of batches, got {batches_per_worker!r}")
        self.epoch_length = int(batches_per_worker)

    def step_begin_epoch(self, epoch):
        if self.cfg.warmup_ratio > 0:
            freqs = list(self.cfg.update_freq)
            total = total_updates(self.cfg.max_epoch, self.cfg.max_update,
                                  freqs[min(epoch, len(freqs)) - 1], self.epoch_length)
            if total != self.total_for_reinit:
                self.reinit(total, 0)  # fairseq's step_update(num_updates) follows at once
        return self.optimizer.get_lr()


@dataclass
class AdjustCosineConfig(_RatioConfig):
    warmup_init_lr: float = field(default=-1, metadata={"help": "initial warmup lr (-1: min_lr)"})
    min_lr: float = field(default=0.0, metadata={"help": "min learning rate"})
    t_mult: float = field(default=1.0, metadata={"help": "factor to grow the length of each period"})
    lr_period_updates: float = field(default=-1, metadata={"help": "initial number of updates per period"})
    lr_shrink: float = field(default=0.1, metadata={"help": "shrink factor for annealing"})


@register_lr_scheduler("adjust_cosine", dataclass=AdjustCosineConfig)
class AdjustCosineSchedule(_RatioScheduler):
    """Linear warmup from ``warmup_init_lr`` to ``lr``, then ``min_lr + (lr - min_lr)(1 + cos(pi t/period))/2``."""

    def __init__(self, cfg: AdjustCosineConfig, optimizer):
        super().__init__(cfg, optimizer)
        if len(cfg.lr) > 1:
            raise ValueError("adjust_cosine takes one lr (optimization.lr)")
        self.max_lr = cfg.lr[0]
        if self.max_lr <= cfg.min_lr:
            raise ValueError(f"adjust_cosine: lr {self.max_lr} must be above min_lr {cfg.min_lr}")
        self.warmup_init_lr = cfg.min_lr if cfg.warmup_init_lr < 0 else cfg.warmup_init_lr
        self.max_update = cfg.max_update
        self._set_span(cfg.warmup_updates, cfg.lr_period_updates if cfg.lr_period_updates > 0
                       else cfg.max_update - cfg.warmup_updates)
        self.lr = self.warmup_init_lr
        self.optimizer.set_lr(self.lr)

    def _set_span(self, warmup_updates, period):
        self.warmup_updates = warmup_updates
        self.period = period
        self.lr_step = (self.max_lr - self.warmup_init_lr) / warmup_updates if warmup_updates > 0 else 1
        self.warmup_factor = 1.0 / warmup_updates if warmup_updates > 0 else 1.0

    def reinit(self, total_num_update, num_updates):
        """The official ``lr_reinit``: warmup and period from the run's total number of updates."""
        self.total_for_reinit = self.max_update = total_num_update
        warmup = int(total_num_update * self.cfg.warmup_ratio)
        self._set_span(warmup, total_num_update - warmup)
        if num_updates > 0:
            return self.step_update(num_updates)
        self.optimizer.set_lr(self.warmup_factor * self.lr)  # official; replaced by the next step_update
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        if num_updates < self.warmup_updates:
            self.lr = self.warmup_init_lr + num_updates * self.lr_step
        elif self.period <= 0:
            self.lr = 0.0  # run length not known yet (max_update 0): the epoch start sets it
        else:
            t = num_updates - self.warmup_updates
            if self.cfg.t_mult != 1:
                i = math.floor(math.log(1 - t / self.period * (1 - self.cfg.t_mult), self.cfg.t_mult))
                t_i = self.cfg.t_mult ** i * self.period
                t_curr = t - (1 - self.cfg.t_mult ** i) / (1 - self.cfg.t_mult) * self.period
            else:
                i = math.floor(t / self.period)
                t_i, t_curr = self.period, t - self.period * i
            shrink = self.cfg.lr_shrink ** i
            min_lr, max_lr = self.cfg.min_lr * shrink, self.max_lr * shrink
            self.lr = min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * t_curr / t_i))
        self.optimizer.set_lr(self.lr)
        return self.lr


@dataclass
class AdjustPolynomialDecayConfig(_RatioConfig):
    force_anneal: Optional[int] = field(default=None, metadata={"help": "force annealing at specified epoch"})
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate to decay to"})
    power: float = field(default=1.0, metadata={"help": "decay exponent"})
    total_num_update: float = field(default=1000000,
                                    metadata={"help": "total updates (replaced when warmup_ratio > 0)"})


@register_lr_scheduler("adjust_polynomial_decay", dataclass=AdjustPolynomialDecayConfig)
class AdjustPolynomialDecaySchedule(_RatioScheduler):
    """Linear warmup from 0 to ``lr``, then polynomial decay to ``end_learning_rate`` at ``total_num_update``."""

    def __init__(self, cfg: AdjustPolynomialDecayConfig, optimizer):
        super().__init__(cfg, optimizer)
        if cfg.total_num_update <= 0:
            raise ValueError("adjust_polynomial_decay: total_num_update must be positive")
        self.lr = cfg.lr[0]
        self.warmup_updates = cfg.warmup_updates
        self.warmup_factor = 1.0 / cfg.warmup_updates if cfg.warmup_updates > 0 else 1.0
        self.total_num_update = cfg.total_num_update
        self.optimizer.set_lr(self.warmup_factor * self.lr)

    def reinit(self, total_num_update, num_updates):
        self.total_for_reinit = self.total_num_update = total_num_update
        self.warmup_updates = int(total_num_update * self.cfg.warmup_ratio)
        self.warmup_factor = 1.0 / self.warmup_updates if self.warmup_updates > 0 else 1.0
        if num_updates > 0:
            return self.step_update(num_updates)
        self.optimizer.set_lr(self.warmup_factor * self.lr)
        return self.optimizer.get_lr()

    def step_begin_epoch(self, epoch):
        lrs = self.cfg.lr
        if self.cfg.force_anneal is None or epoch < self.cfg.force_anneal:
            self.lr = lrs[min(epoch, len(lrs) - 1)]  # fairseq's get_next_lr
        super().step_begin_epoch(epoch)
        self.optimizer.set_lr(self.warmup_factor * self.lr)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        if self.warmup_updates > 0 and num_updates <= self.warmup_updates:
            self.warmup_factor = num_updates / float(self.warmup_updates)
            lr = self.warmup_factor * self.lr
        elif num_updates >= self.total_num_update:
            lr = self.cfg.end_learning_rate
        else:
            lr_range = self.lr - self.cfg.end_learning_rate
            remaining = 1 - (num_updates - self.warmup_updates) / (self.total_num_update - self.warmup_updates)
            lr = lr_range * remaining ** self.cfg.power + self.cfg.end_learning_rate
        self.optimizer.set_lr(lr)
        return self.optimizer.get_lr()
