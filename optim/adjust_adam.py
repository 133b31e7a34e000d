"""``adjust_adam``: the official fine-tuning optimizer, registered with stock fairseq 0.12.

fairseq's Adam (decoupled weight decay ``p -= lr * wd * p`` before the step, eps added to the
un-corrected ``sqrt(v)``, fp32 math on fp16/bf16 parameters -- the official pure-PyTorch update
exactly) over the parameter groups of :mod:`one_peace.optim.layer_decay`; ``set_lr`` scales each
group's learning rate by its ``lr_scale``.  Works in fp32 (where the official trainer crashes with
layer decay), in fairseq's FP16/BF16 optimizers (non-flat) and their memory-efficient variants.

``use_distributed_fused_adam`` (the official flag for apex's DistributedFusedAdam, which shards the
optimizer state over the GPUs) shards the state with torch's ``ZeroRedundancyOptimizer`` over the
data-parallel workers instead: same update, each worker keeps the Adam moments of its share of
the parameters.
"""
import logging
from dataclasses import dataclass, field

import torch.distributed as dist
from fairseq.optim import register_optimizer
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from .layer_decay import parameter_groups

logger = logging.getLogger(__name__)


@dataclass
class AdjustAdamConfig(FairseqAdamConfig):
    # The official configs set these in `common` (added to fairseq's CommonConfig by
    # optim/common_config.py); set here they win over `common`.
    layer_decay: float = field(default="${oc.select:common.layer_decay,1.0}", metadata={
        "help": "layer-wise lr decay (default: common.layer_decay, else 1 = off)"})
    no_bias_decay: bool = field(default="${oc.select:common.no_bias_decay,false}", metadata={
        "help": "no weight decay for biases, 1-D tensors and no_weight_decay() names "
                "(default: common.no_bias_decay)"})
    use_distributed_fused_adam: bool = field(default=False, metadata={
        "help": "shard the optimizer state over the data-parallel workers "
                "(torch ZeroRedundancyOptimizer; the official used apex DistributedFusedAdam)"})
    # Official fields of apex's DistributedFusedAdam; accepted so official yamls load, not used.
    bucket_cap_mb: int = field(default=100, metadata={"help": "official apex field (unused)"})
    pipeline_size: int = field(default=2, metadata={"help": "official apex field (unused)"})
    contiguous_grad_buffer: bool = field(default=False, metadata={"help": "official apex field (unused)"})


@register_optimizer("adjust_adam", dataclass=AdjustAdamConfig)
class AdjustAdam(FairseqAdam):
    def __init__(self, cfg: AdjustAdamConfig, params):
        groups = parameter_groups(params, cfg.weight_decay, float(cfg.layer_decay), bool(cfg.no_bias_decay))
        super().__init__(cfg, groups)
        if cfg.use_distributed_fused_adam and dist.is_available() and dist.is_initialized() \
                and dist.get_world_size() > 1:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            self._optimizer = ZeroRedundancyOptimizer(
                groups, optimizer_class=type(self._optimizer), **self.optimizer_config)
            logger.info("adjust_adam: optimizer state sharded over %d workers", dist.get_world_size())
        logger.info("adjust_adam: %d parameter groups (layer_decay %s, no_bias_decay %s)",
                    len(groups), cfg.layer_decay, cfg.no_bias_decay)

    @property
    def supports_flat_params(self):
        # One flat fp32 tensor has no per-parameter groups: fairseq then asks for --fp16-no-flatten-grads.
        return float(self.cfg.layer_decay) == 1.0 and not self.cfg.no_bias_decay

    def set_lr(self, lr):
        self.scheduled_lr = lr
        for group in self.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def get_lr(self):
        # What fairseq logs as `lr`: the schedule's value.  The official logs group 0's scaled lr,
        # which is the same value there (its first group is the top layer's, scale 1).
        scheduled = getattr(self, "scheduled_lr", None)
        if scheduled is None:
            group = self.param_groups[0]
            return group["lr"] / group.get("lr_scale", 1.0)
        return scheduled

