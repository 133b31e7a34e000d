"""The retrieval task family: rows of one modality ranked against captions, and vice versa.

``QUERY_MODALITY`` (a class attribute of the benchmark's task) is the modality of the rows
(``audio`` for AudioCaps/Clotho/ESC-50, ``image`` for COCO/Flickr30K); ``METRIC_PREFIX`` names
its recall keys with the official names: ``txt_r1/5/10`` (query -> text), ``<prefix>_r1/5/10``
(text -> query) and their mean ``r_mean``, in percent.

Evaluation embeds every caption of the split once per validation (each worker a share,
gathered), then scores each row's embedding against all of them.  A row matches the
captions listed under its ``uniq_id`` in ``valid_file`` (JSON {id: [captions]}); without
``valid_file`` the captions are the ``text`` column of the evaluation TSV.
"""
import functools
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..data_utils.captions import CaptionBank, prefixed
from ..data_utils.collate import collate_tokens
from ..fairseq_glue.metric_logging import concatenated, log_arrays, log_split_metrics
from ..metrics.gather import gather_with_offsets, world_info
from ..metrics.retrieval import first_match_rank, retrieval_metrics
from ..models.modalities import get_modality
from .base_task import BaseTask, BaseTaskConfig
from .classification import sample_ids

logger = logging.getLogger(__name__)


@dataclass
class RetrievalConfig(BaseTaskConfig):
    valid_file: Optional[str] = field(default=None, metadata={
        "help": "JSON {uniq_id: [captions]} of the evaluation split (ESC-50: {class id: [label]})"})
    use_template: bool = field(default=False, metadata={"help": "caption = the task's TEMPLATE + text"})
    text_batch_size: int = field(default=64, metadata={"help": "captions per forward when embedding them"})


def embed_modality(model, net_input: Dict, modality: str) -> torch.Tensor:
    """Embeddings of one modality of a batch through the official flag-driven forward (the model's
    ``forward``, so a DDP-wrapped model synchronises its gradients)."""
    keys = get_modality(modality).input_keys
    return model(encoder_type=modality, **{k: net_input[k] for k in keys if k in net_input})


class RetrievalTask(BaseTask):
    """The family's base (not registered).  A benchmark's task declares ``QUERY_MODALITY``, the modality
    of its rows: the one place it is named.  The retrieval criteria read it from the task they are
    built with, and embed a batch through :meth:`embed_queries` / :meth:`embed_captions`."""

    QUERY_MODALITY: str  # audio, image, video, ... (each benchmark's task)
    METRIC_PREFIX = "audio"
    ID_COLUMN = "uniq_id"  # the column captions are grouped by (the keys of valid_file)
    CAPTION_COLUMN = "text"  # the TSV's caption column (the evaluation captions without valid_file)
    ZERO_SHOT_MODEL = "one_peace_retrieval"  # --zero-shot evaluates a pretraining checkpoint as this model
    TEMPLATE = ""  # prefix of every caption when use_template is set

    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg, dictionary, tokenizer)
        self.bank: Optional[CaptionBank] = None
        self._unknown_ids_warned = False

    @property
    def caption(self):
        """text -> caption as embedded (the template when ``use_template``); a picklable function,
        so datasets holding it can go to DataLoader worker processes."""
        return functools.partial(prefixed, prefix=self.TEMPLATE if self.cfg.use_template else "")

    @property
    def metric_keys(self):
        p = self.METRIC_PREFIX
        return ("txt_r1", "txt_r5", "txt_r10", f"{p}_r1", f"{p}_r5", f"{p}_r10", "r_mean", "txt_r_mean",
                f"{p}_r_mean", "txt_count", f"{p}_count")

    # ---- caption bank ------------------------------------------------------------------------
    def load_bank(self) -> CaptionBank:
        if self.cfg.valid_file:
            bank = CaptionBank.from_valid_file(self.cfg.valid_file)
            self.check_caption_ids(bank)
            return bank
        return CaptionBank.from_tsv(self.reader("valid"), self.ID_COLUMN, self.CAPTION_COLUMN)

    def check_caption_ids(self, bank: CaptionBank) -> None:
        """Every id of the caption file must name a row of the splits being evaluated (else its captions
        could never be retrieved correctly and would silently lower the text -> row recall)."""
        for split, dataset in self.datasets.items():
            if split == "train":
                continue
            rows = {row.get(self.ID_COLUMN, "") for row in dataset.reader}
            orphans = [key for key in bank.keys if key not in rows]
            if orphans:
                raise ValueError(f"{self.cfg.valid_file}: captions of {len(orphans)} ids match no row of "
                                 f"{dataset.reader.path} (column {self.ID_COLUMN}): {orphans[:10]}")

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
            texts = [self.caption(bank.captions[j]) for j in todo[i:i + step]]
            tokens = collate_tokens([self.tokenizer.encode(t, clean=True) for t in texts], pad_idx=self.tokenizer.pad)
            chunks.append(model(src_tokens=tokens.to(device), encoder_type="text").float())
        local = torch.cat(chunks)[: end - start]
        bank.embeddings, _ = gather_with_offsets(local)
        model.train(was_training)
        logger.info("embedded %d captions of %d %s rows", n, len(bank.keys), self.QUERY_MODALITY)
        return bank

    def begin_valid_epoch(self, epoch, model):
        self.bank = self.build_bank(model)  # the model changed since the last validation

    # ---- steps -------------------------------------------------------------------------------
    def query_logs(self, queries, sample) -> Dict:
        groups = []
        for uid in sample_ids(sample):
            group = self.bank.index.get(uid, -1)
            if group < 0 and not self._unknown_ids_warned:
                logger.warning("row %r has no caption in the evaluation captions; it counts as a miss", uid)
                self._unknown_ids_warned = True
            groups.append(group)
        return {"ret_query_emb": queries.float().cpu(), "ret_query_gid": torch.tensor(groups, dtype=torch.long)}

    def embed_queries(self, model, sample):
        """Embeddings of the batch's rows (``QUERY_MODALITY``)."""
        return embed_modality(model, sample["net_input"], self.QUERY_MODALITY)

    def embed_captions(self, model, sample):
        """Embeddings of the batch's captions (``src_tokens``)."""
        return embed_modality(model, sample["net_input"], "text")

    def valid_step(self, sample, model, criterion):
        if "net_input" not in sample:
            return torch.zeros(()), 0, {"num_skipped": sample.get("num_skipped", 0)}
        model.eval()
        if self.bank is None:
            self.bank = self.build_bank(model)
        with torch.no_grad():
            queries = self.embed_queries(model, sample)
            if sample["net_input"].get("src_tokens") is not None:
                text = self.embed_captions(model, sample)
                # Local negatives only: validation must not depend on other workers' batches.
                loss, sample_size, logging_output = criterion.loss_from_embeddings(
                    queries, text, model(return_logit_scale=True), sample, gather=False)
            else:
                n = queries.size(0)
                loss, sample_size = torch.zeros((), device=queries.device), 1
                logging_output = {"loss": 0.0, "nsentences": n, "ntokens": n, "sample_size": 1}
            logging_output.update(self.query_logs(queries, sample))
        return loss, sample_size, logging_output

    @torch.no_grad()
    def eval_step(self, model, sample, topk: int = 10):
        if "net_input" not in sample:
            return {}, []
        if self.bank is None:
            self.bank = self.build_bank(model)
        queries = self.embed_queries(model, sample).float()
        logs = self.query_logs(queries, sample)
        scores = queries @ self.bank.embeddings.to(queries.device).t()
        ranks = first_match_rank(scores.cpu(), logs["ret_query_gid"], self.bank.groups)
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
        queries = concatenated(meters, "ret_query_emb")
        groups = concatenated(meters, "ret_query_gid")
        out = retrieval_metrics(queries, groups, self.bank.embeddings.float().cpu(), self.bank.groups,
                                query_name=self.METRIC_PREFIX)
        return {k: round(v, 4) for k, v in out.items()}

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.reduce_split_metrics(logging_outputs)

    def reduce_split_metrics(self, logging_outputs):
        if log_arrays(logging_outputs, ("ret_query_emb", "ret_query_gid")):
            log_split_metrics(self.metric_keys, self._metrics_from_meters, cache_key="ret_query_emb")

    @staticmethod
    def logging_outputs_can_be_summed(criterion) -> bool:
        return False  # validation logs carry the rows' embeddings

