"""``aqa``: audio question answering (AVQA) as multiple choice, accuracy of the arg-max.

TSV ``uniq_id, audio, text, duration`` with ``text`` =
``question&&&answer_1&&&...&&&answer_n&&&k`` (k = 0-based index of the correct answer,
n = ``num_choices``).  Every candidate becomes the text ``"{question} answer: {a_k}"``
paired with the (repeated) clip; the ``al`` classify model scores each pair with one
logit (``num_classes=1``) and the ``hinge_loss`` criterion ranks them.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task

from ...data_utils.audio_dataset import AudioRowDataset
from ...data_utils.collate import collate_tokens
from ...data_utils.dataset import parse_class_id
from ...data_utils.text import clean_caption
from ..base_task import BaseTaskConfig
from ..classification import ClassificationTask

SEPARATOR = "&&&"


@dataclass
class AQAConfig(BaseTaskConfig):
    head_type: str = "al"
    num_classes: Optional[int] = 1
    num_choices: int = field(default=4, metadata={"help": "answer candidates per question"})


class AQADataset(AudioRowDataset):
    def __init__(self, split, reader, tokenizer, num_choices, feature_spec, max_duration=15, skip_bad_samples=True):
        super().__init__(split, reader, feature_spec, max_duration, skip_bad_samples)
        self.tokenizer = tokenizer
        self.num_choices = num_choices

    def parse(self, text: str):
        parts = text.split(SEPARATOR)
        expected = self.num_choices + 2
        if len(parts) != expected:
            raise ValueError(f"AQA text has {len(parts)} '{SEPARATOR}'-separated fields, expected {expected} "
                             f"(question, {self.num_choices} answers, index of the correct answer)")
        question, answers = clean_caption(parts[0]), [clean_caption(a) for a in parts[1:-1]]
        label = parse_class_id(parts[-1], self.num_choices, what="correct-answer index")
        return question, answers, label

    def load_item(self, index, row):
        question, answers, label = self.parse(self.field(row, "text"))
        # The tokenizer prepends the space: ' {question} answer: {answer}' as in the official task.
        tokens = [self.tokenizer.encode(f"{question} answer: {answer}") for answer in answers]
        item = self.audio_item(row)
        item.update(candidates=tokens, target=torch.tensor(label))
        return item

    def collate(self, samples):
        net_input = self.collate_clips(samples, repeat=self.num_choices)
        tokens = [t for s in samples for t in s["candidates"]]  # sample-major, num_choices each
        net_input["src_tokens"] = collate_tokens(tokens, pad_idx=self.tokenizer.pad)
        return {"net_input": net_input, "target": torch.stack([s["target"] for s in samples]),
                "uniq_ids": [s["uniq_id"] for s in samples], "nsentences": len(samples)}


@register_task("aqa", dataclass=AQAConfig)
class AQATask(ClassificationTask):
    DEFAULT_COLS = "uniq_id,audio,text,duration"
    TARGET = "choice"

    def build_dataset(self, split, reader):
        return AQADataset(split, reader, self.tokenizer, self.cfg.num_choices, self.feature_spec,
                          self.cfg.max_duration, skip_bad_samples=self.skip_bad(split))

    def build_criterion(self, cfg):
        criterion = super().build_criterion(cfg)
        choices = getattr(criterion, "num_choices", self.cfg.num_choices)
        if choices != self.cfg.num_choices:
            raise ValueError(f"criterion.num_choices={choices} but task.num_choices={self.cfg.num_choices}")
        return criterion
