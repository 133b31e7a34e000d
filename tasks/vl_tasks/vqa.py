"""``vqa``: VQAv2 as multi-label classification over the answer vocabulary (3129 answers).

TSV ``uniq_id, image, question, refs``; ``refs`` lists the reference answers as items
``answer|!+label_id|!+score`` joined by ``&&`` (empty for unlabeled test rows).  The
target is the soft score vector; the metric (``accuracy``) is the VQA score: the
target score of the arg-max answer, averaged over questions.
"""
import logging
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from fairseq.tasks import register_task

from ...data_utils.collate import collate_tokens
from ...data_utils.dataset import TSVDataset, parse_class_id
from ...data_utils.image import image_to_tensor, load_image
from ..classification import ClassificationConfig, ClassificationTask

logger = logging.getLogger(__name__)

ITEM_SEPARATOR = "&&"
FIELD_SEPARATOR = "|!+"


@dataclass
class VQAConfig(ClassificationConfig):
    head_type: str = "vl"
    num_classes: Optional[int] = 3129


def parse_refs(refs: str, num_classes: int):
    """(soft target (num_classes,), {label id: answer}) from a ``refs`` cell."""
    target = torch.zeros(num_classes)
    answers: Dict[int, str] = {}
    for item in filter(None, (part.strip() for part in refs.split(ITEM_SEPARATOR))):
        fields = item.split(FIELD_SEPARATOR)
        if len(fields) != 3:
            raise ValueError(f"reference {item!r} is not 'answer{FIELD_SEPARATOR}label_id{FIELD_SEPARATOR}score'")
        answer, label, score = fields
        label = parse_class_id(label, num_classes, what="answer label id")
        try:
            target[label] = float(score)
        except ValueError:
            raise ValueError(f"reference {item!r}: score {score!r} is not a number") from None
        answers[label] = answer
    return target, answers


class VQADataset(TSVDataset):
    def __init__(self, split, reader, tokenizer, num_classes, patch_image_size, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.tokenizer = tokenizer
        self.num_classes = num_classes
        self.patch_image_size = patch_image_size

    def load_item(self, index, row):
        image_path, question = self.field(row, "image"), self.field(row, "question")
        target, answers = parse_refs(row.get("refs", ""), self.num_classes)
        tokens = self.tokenizer.encode(question, clean=True)
        image = image_to_tensor(load_image(self.resolve(image_path), self.exif_transpose), self.patch_image_size)
        return {"uniq_id": row.get("uniq_id", ""), "source_text": tokens, "source_image": image,
                "target": target, "answers": answers}

    def collate(self, samples):
        net_input = {"src_tokens": collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad),
                     "src_images": torch.stack([s["source_image"] for s in samples])}
        return {"net_input": net_input, "target": torch.stack([s["target"] for s in samples]),
                "uniq_ids": [s["uniq_id"] for s in samples], "answers": [s["answers"] for s in samples]}


@register_task("vqa", dataclass=VQAConfig)
class VQATask(ClassificationTask):
    DEFAULT_COLS = "uniq_id,image,question,refs"
    TARGET = "soft"

    def build_dataset(self, split, reader):
        return VQADataset(split, reader, self.tokenizer, self.num_classes, self.cfg.patch_image_size,
                          skip_bad_samples=self.skip_bad(split))

    def predictions(self, logits, sample):
        out = super().predictions(logits, sample)
        answers = sample.get("answers") or [{}] * len(out)
        for i, item in enumerate(out):
            # The answer string: from the label map (label_file), else from the row's references.
            names = self.label_names or answers[i]
            item["answer"] = names.get(item["prediction"])
            item["score"] = float(sample["target"][i][item["prediction"]])
            item.pop("target", None)  # the soft vector is long; the score says what counts
        return out

    def submission(self, predictions):
        """VQAv2 evaluation-server format: ``[{"question_id": int, "answer": str}, ...]``."""
        if self.label_names is None:
            logger.warning("no VQAv2 submission file: set task.label_file (the answer vocabulary written by "
                           "convert_vqa.py) to map predictions to answers")
            return None
        return "vqa_submission.json", [{"question_id": int(p["uniq_id"]), "answer": p["answer"]}
                                       for p in predictions]
