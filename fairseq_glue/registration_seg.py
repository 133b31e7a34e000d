"""fairseq registration of the semantic segmentation model (``one_peace_segmentation``).

Kept apart from ``registration.py`` like the audio-visual model; imported by
``user_src/registry.py``.  Loading follows ``one_peace_classify``: the official
upgrades, and the decoder (``seg_head`` / ``aux_head``) starts fresh from a pretrained checkpoint.
Architectures ``one_peace_segmentation_{tiny,base,4b}``: the encoder size presets plus the
decoder width of ``architectures.SEGMENTATION_HEADS``.
"""
from fairseq.models import register_model, register_model_architecture

from ..models.architectures import PRESETS, SEGMENTATION_HEADS, apply_preset
from ..models.config import OnePeaceSegmentationConfig
from ..models.deferred_init import build_for_loading
from ..models.segmentation import OnePeaceSegmentationModel
from .registration import _configure_from_task, _FairseqGlue, _required_num_classes, fairseq_config


@register_model("one_peace_segmentation", dataclass=fairseq_config(OnePeaceSegmentationConfig))
class OnePeaceSegmentation(OnePeaceSegmentationModel, _FairseqGlue):
    @classmethod
    def build_model(cls, cfg, task):
        num_classes = _required_num_classes(task, "one_peace_segmentation")
        # Rel-pos buckets from task.patch_image_size (the crop every forward sees).
        _configure_from_task(cfg, task, ("image",), "one_peace_segmentation")
        return build_for_loading(lambda: cls(cfg, num_classes=num_classes), cfg)


def _register_architectures():
    for size, encoder_preset in PRESETS.items():
        full = dict(encoder_preset, **SEGMENTATION_HEADS[size])

        def arch(cfg, preset=full):
            if hasattr(cfg, "encoder"):  # the nested model config, at build time (as registration.py)
                apply_preset(cfg, preset, fairseq_config(OnePeaceSegmentationConfig)())

        register_model_architecture("one_peace_segmentation", f"one_peace_segmentation_{size}")(arch)


_register_architectures()
