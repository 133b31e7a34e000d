"""``audio_text_retrieval``: AudioCaps / Clotho retrieval and ESC-50 zero-shot classification.

The retrieval family (``tasks/retrieval.py``) with audio rows: recall keys ``txt_r*`` (audio ->
text), ``audio_r*`` (text -> audio) and ``r_mean``.  Training rows are (clip, caption) pairs.

ESC-50 zero-shot: ``valid_file`` maps class ids to their label, rows' ``uniq_id`` is the class
id and ``use_template`` turns a label into "This is a sound of <label>", so ``txt_r1`` is the
zero-shot accuracy.
"""
from dataclasses import dataclass

from fairseq.tasks import register_task

from ...data_utils.audio_dataset import AudioRowDataset
from ...data_utils.captions import CaptionedRows
from ..retrieval import RetrievalConfig, RetrievalTask

TEMPLATE = "This is a sound of "


@dataclass
class AudioTextRetrievalConfig(RetrievalConfig):
    head_type: str = "al"


class AudioTextDataset(CaptionedRows, AudioRowDataset):
    """Row: ``uniq_id, audio, text, duration``; the caption is required in training only."""

    def __init__(self, split, reader, tokenizer, feature_spec, max_duration=15, caption=None,
                 require_text=True, skip_bad_samples=True):
        super().__init__(split, reader, feature_spec, max_duration, skip_bad_samples)
        self.tokenizer = tokenizer
        self.caption = caption or (lambda text: text)
        self.require_text = require_text

    def load_item(self, index, row):
        tokens = self.caption_tokens(row, "text")  # first: an empty caption is reported before any audio is read
        return dict(self.audio_item(row), source_text=tokens)

    def collate(self, samples):
        batch = super().collate(samples)
        self.add_caption_tokens(samples, batch["net_input"])
        return batch


@register_task("audio_text_retrieval", dataclass=AudioTextRetrievalConfig)
class AudioTextRetrievalTask(RetrievalTask):
    QUERY_MODALITY = "audio"
    METRIC_PREFIX = "audio"
    TEMPLATE = TEMPLATE

    def build_dataset(self, split, reader):
        return AudioTextDataset(split, reader, self.tokenizer, self.feature_spec, self.cfg.max_duration,
                                caption=self.caption, require_text=(split == "train"),
                                skip_bad_samples=self.skip_bad(split))
