"""``audio_text_retrieval``: AudioCaps / Clotho retrieval and ESC-50 zero-shot classification.

Training rows are (clip, caption) pairs.  Evaluation ranks every caption of the split
for every clip and vice versa: recall@1/5/10 in both directions, ``txt_r*`` (audio ->
text), ``audio_r*`` (text -> audio) and their mean ``r_mean``.  A clip matches the
captions listed under its ``uniq_id`` in ``valid_file`` (JSON {id: [captions]}); without
``valid_file`` the captions are the ``text`` column of the evaluation TSV.

ESC-50 zero-shot: ``valid_file`` maps class ids to their label, rows' ``uniq_id`` is
the class id and ``use_template`` turns a label into "This is a sound of <label>", so
``txt_r1`` is the zero-shot accuracy.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.tasks import register_task

from ...criterions.gather import gather_with_offsets, world_info
from ...data_utils.collate import collate_tokens
from ...data_utils.tsv import TSVReader
from ...metrics.fairseq_logging import concatenated, log_arrays, log_split_metrics
from ...metrics.retrieval import first_match_rank, retrieval_metrics
from ..base_task import BaseTaskConfig
from .audio_dataset import AudioRowDataset
from .classify_base import ClassifyTaskBase, sample_ids

logger = logging.getLogger(__name__)

TEMPLATE = "This is a sound of "
RETRIEVAL_KEYS = ("txt_r1", "txt_r5", "txt_r10", "audio_r1", "audio_r5", "audio_r10", "r_mean")


@dataclass
class AudioTextRetrievalConfig(BaseTaskConfig):
    head_type: str = "al"
    valid_file: Optional[str] = field(default=None, metadata={
        "help": "JSON {uniq_id: [captions]} of the evaluation split (ESC-50: {class id: [label]})"})
    use_template: bool = field(default=False, metadata={"help": "caption = 'This is a sound of ' + text"})
    text_batch_size: int = field(default=64, metadata={"help": "captions per forward when embedding them"})


class AudioTextDataset(AudioRowDataset):
    def __init__(self, split, reader, tokenizer, feature_spec, max_duration=15, use_template=False,
                 require_text=True, skip_bad_samples=True):
        super().__init__(split, reader, feature_spec, max_duration, skip_bad_samples)
        self.tokenizer = tokenizer
        self.use_template = use_template
        self.require_text = require_text

    def load_item(self, index, row):
        text = row.get("text", "")
        if self.require_text and not text.strip():
            raise ValueError("empty caption")
        item = self.audio_item(row)
        if text.strip():
            item["source_text"] = self.tokenizer.encode(apply_template(text, self.use_template), clean=True)
        return item

    def collate(self, samples):
        batch = super().collate(samples)
        if all("source_text" in s for s in samples):
            batch["net_input"]["src_tokens"] = collate_tokens([s["source_text"] for s in samples],
                                                              pad_idx=self.tokenizer.pad)
        return batch


def apply_template(text: str, use_template: bool) -> str:
    return TEMPLATE + text if use_template else text


class CaptionBank:
    """The evaluation captions, their group (clip id) and their embeddings."""

    def __init__(self, keys: List[str], captions: List[str], groups: List[int]):
        self.keys, self.captions = keys, captions
        self.groups = torch.tensor(groups, dtype=torch.long)
        self.index = {key: i for i, key in enumerate(keys)}
        self.embeddings: Optional[torch.Tensor] = None  # (N, D) on the model's device

    @classmethod
    def from_valid_file(cls, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"caption/label file not found: {path} (set by task.valid_file)")
        with open(path, "r", encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object {{id: [captions]}}")
        keys, captions, groups = [], [], []
        for key, value in data.items():
            texts = value if isinstance(value, list) else [value]
            keys.append(str(key))
            for text in texts:
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{path}: entry {key!r} holds an empty or non-string caption {text!r}")
                captions.append(text)
                groups.append(len(keys) - 1)
        return cls(keys, captions, groups)

    @classmethod
    def from_tsv(cls, reader: TSVReader):
        keys, captions, groups, index, seen = [], [], [], {}, set()
        for row in reader:
            if "uniq_id" not in row or "text" not in row:
                raise ValueError(f"{reader.path}: captions need the uniq_id and text columns (or set valid_file)")
            group = index.setdefault(row["uniq_id"], len(keys))
            if group == len(keys):
                keys.append(row["uniq_id"])
            if row["text"].strip() and (group, row["text"]) not in seen:  # one entry per distinct caption
                seen.add((group, row["text"]))
                captions.append(row["text"])
                groups.append(group)
        return cls(keys, captions, groups)


@register_task("audio_text_retrieval", dataclass=AudioTextRetrievalConfig)
class AudioTextRetrievalTask(ClassifyTaskBase):
    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg, dictionary, tokenizer)
        self.bank: Optional[CaptionBank] = None
        self._unknown_ids_warned = False

    def build_dataset(self, split, reader):
        return AudioTextDataset(split, reader, self.tokenizer, self.feature_spec, self.cfg.max_duration,
                                use_template=self.cfg.use_template, require_text=(split == "train"),
                                skip_bad_samples=self.skip_bad(split))

    # ---- caption bank ------------------------------------------------------------------------
    def load_bank(self) -> CaptionBank:
        if self.cfg.valid_file:
            return CaptionBank.from_valid_file(self.cfg.valid_file)
        return CaptionBank.from_tsv(self.reader("valid"))

    @torch.no_grad()
    def build_bank(self, model) -> CaptionBank:
        """Embed every caption; each worker embeds a contiguous share, then all are gathered."""
        bank = self.load_bank()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        rank, world = world_info()
        n = len(bank.captions)
        start, end = n * rank // world, n * (rank + 1) // world
        chunks = []
        # A worker with no share still runs one caption so every worker gathers a (k, D) tensor.
        todo = list(range(start, end)) or [0]
        step = self.cfg.text_batch_size
        for i in range(0, len(todo), step):
            texts = [apply_template(bank.captions[j], self.cfg.use_template) for j in todo[i:i + step]]
            tokens = collate_tokens([self.tokenizer.encode(t, clean=True) for t in texts], pad_idx=self.tokenizer.pad)
            chunks.append(model(src_tokens=tokens.to(device), encoder_type="text").float())
        local = torch.cat(chunks)[: end - start]
        bank.embeddings, _ = gather_with_offsets(local)
        model.train(was_training)
        logger.info("embedded %d captions of %d clips", n, len(bank.keys))
        return bank

    def begin_valid_epoch(self, epoch, model):
        self.bank = self.build_bank(model)  # the model changed since the last validation

    # ---- steps -------------------------------------------------------------------------------
    def audio_logs(self, audio, sample) -> Dict:
        groups = []
        for uid in sample_ids(sample):
            group = self.bank.index.get(uid, -1)
            if group < 0 and not self._unknown_ids_warned:
                logger.warning("clip %r has no caption in the evaluation captions; it counts as a miss", uid)
                self._unknown_ids_warned = True
            groups.append(group)
        return {"ret_audio_emb": audio.float().cpu(), "ret_audio_gid": torch.tensor(groups, dtype=torch.long)}

    def embed_audio(self, model, sample):
        net_input = sample["net_input"]
        return model(src_audios=net_input["src_audios"], audio_padding_masks=net_input["audio_padding_masks"],
                     encoder_type="audio")

    def valid_step(self, sample, model, criterion):
        if "net_input" not in sample:
            return torch.zeros(()), 0, {"num_skipped": sample.get("num_skipped", 0)}
        model.eval()
        if self.bank is None:
            self.bank = self.build_bank(model)
        with torch.no_grad():
            if hasattr(criterion, "embed"):
                audio, text, scale = criterion.embed(model, sample)
            else:
                audio, text, scale = self.embed_audio(model, sample), None, None
            if text is not None:
                # Local negatives only: validation must not depend on other workers' batches.
                loss, sample_size, logging_output = criterion.loss_from_embeddings(audio, text, scale, sample,
                                                                                   gather=False)
            else:
                n = audio.size(0)
                loss, sample_size = torch.zeros((), device=audio.device), 1
                logging_output = {"loss": 0.0, "nsentences": n, "ntokens": n, "sample_size": 1}
            logging_output.update(self.audio_logs(audio, sample))
        return loss, sample_size, logging_output

    @torch.no_grad()
    def eval_step(self, model, sample, topk: int = 10):
        if "net_input" not in sample:
            return {}, []
        if self.bank is None:
            self.bank = self.build_bank(model)
        audio = self.embed_audio(model, sample).float()
        logs = self.audio_logs(audio, sample)
        scores = audio @ self.bank.embeddings.to(audio.device).t()
        ranks = first_match_rank(scores.cpu(), logs["ret_audio_gid"], self.bank.groups)
        top = scores.topk(min(topk, scores.size(1)), dim=1)
        preds = []
        for i, uid in enumerate(sample_ids(sample)):
            idx = top.indices[i].tolist()
            preds.append({
                "uniq_id": uid,
                "prediction": self.bank.keys[self.bank.groups[idx[0]]],
                "top_ids": [self.bank.keys[self.bank.groups[j]] for j in idx],
                "top_captions": [self.bank.captions[j] for j in idx],
                "top_scores": top.values[i].tolist(),
                "first_match_rank": int(ranks[i]),
            })
        return logs, preds

    def _metrics_from_meters(self, meters):
        audio = concatenated(meters, "ret_audio_emb")
        groups = concatenated(meters, "ret_audio_gid")
        out = retrieval_metrics(audio, groups, self.bank.embeddings.float().cpu(), self.bank.groups,
                                query_name="audio")
        return {k: round(v, 4) for k, v in out.items()}

    def reduce_split_metrics(self, logging_outputs):
        if log_arrays(logging_outputs, ("ret_audio_emb", "ret_audio_gid")):
            log_split_metrics(RETRIEVAL_KEYS, self._metrics_from_meters, cache_key="ret_audio_emb")

    @staticmethod
    def logging_outputs_can_be_summed(criterion) -> bool:
        return False  # validation logs carry audio embeddings
