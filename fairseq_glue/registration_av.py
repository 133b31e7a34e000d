"""fairseq registration of the audio-visual classify model (``one_peace_classify_av``).

Kept apart from ``registration.py`` so the official three models stay untouched; it
is imported by ``user_src/registry.py``.  Checkpoint loading (official upgrades,
fresh classification head, missing image branch when starting from an audio-only
checkpoint) is the same as for ``one_peace_classify``.
"""
from dataclasses import dataclass

from fairseq.models import register_model, register_model_architecture

from ..models.architectures import PRESETS, apply_preset
from ..models.audio_visual import AV_MODALITIES, OnePeaceAudioVisualClassifyModel
from ..models.config import OnePeaceClassifyConfig
from ..models.deferred_init import build_for_loading
from .registration import _configure_from_task, _FairseqGlue, _required_num_classes, fairseq_config


@dataclass
class OnePeaceClassifyAVConfig(OnePeaceClassifyConfig):
    pass


@register_model("one_peace_classify_av", dataclass=fairseq_config(OnePeaceClassifyAVConfig))
class OnePeaceClassifyAV(OnePeaceAudioVisualClassifyModel, _FairseqGlue):
    @classmethod
    def build_model(cls, cfg, task):
        num_classes = _required_num_classes(task, "one_peace_classify_av")
        _configure_from_task(cfg, task, AV_MODALITIES, "one_peace_classify_av")
        return build_for_loading(lambda: cls(cfg, num_classes=num_classes), cfg)


def _register_architectures():
    for size, preset in PRESETS.items():
        def arch(cfg, preset=preset):
            apply_preset(cfg, preset, fairseq_config(OnePeaceClassifyAVConfig)())

        register_model_architecture("one_peace_classify_av", f"one_peace_classify_av_{size}")(arch)


_register_architectures()
