"""``vggsound``: VGGSound audio classification over 309 classes (accuracy) -- ``audio_classify``
with the official name and class count."""
from dataclasses import dataclass
from typing import Optional

from fairseq.tasks import register_task

from .audio_classify import AudioClassifyConfig, AudioClassifyTask


@dataclass
class VggsoundConfig(AudioClassifyConfig):
    num_classes: Optional[int] = 309


@register_task("vggsound", dataclass=VggsoundConfig)
class VggsoundTask(AudioClassifyTask):
    pass
