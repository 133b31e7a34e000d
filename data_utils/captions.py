"""Captions of the retrieval benchmarks: the evaluation caption bank and the caption column of rows.

* :class:`CaptionBank`: every evaluation caption, the group (row id) it belongs to and, once the
  task has embedded them, their embeddings; read from a ``valid_file`` JSON ``{id: [captions]}``
  or from the id and caption columns of the evaluation TSV.
* :class:`CaptionedRows`: the dataset mixin of the retrieval datasets (an optional caption column,
  required in training only, tokenised through the task's caption function).
* :func:`prefixed`: the caption function (``prefix + text``), picklable through ``functools.partial``
  so datasets holding it can go to DataLoader worker processes.
"""
from typing import List, Optional

import torch

from .collate import collate_tokens
from .labels import read_json_file
from .tsv import TSVReader


class CaptionBank:
    """The evaluation captions, their group (clip id) and their embeddings."""

    def __init__(self, keys: List[str], captions: List[str], groups: List[int]):
        self.keys, self.captions = keys, captions
        self.groups = torch.tensor(groups, dtype=torch.long)
        self.index = {key: i for i, key in enumerate(keys)}
        self.embeddings: Optional[torch.Tensor] = None  # (N, D) on the model's device

    @classmethod
    def from_valid_file(cls, path: str):
        data = read_json_file(path, "valid_file", what="caption/label file")
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
    def from_tsv(cls, reader: TSVReader, id_column: str = "uniq_id", caption_column: str = "text"):
        keys, captions, groups, index, seen = [], [], [], {}, set()
        for row in reader:
            if id_column not in row or caption_column not in row:
                raise ValueError(f"{reader.path}: the evaluation captions come from its {id_column} and "
                                 f"{caption_column} columns (or from a valid_file JSON); it has "
                                 f"{', '.join(row) or 'no columns'}")
            uid, text = row[id_column], row[caption_column]
            group = index.setdefault(uid, len(keys))
            if group == len(keys):
                keys.append(uid)
            if text.strip() and (group, text) not in seen:  # one entry per distinct caption
                seen.add((group, text))
                captions.append(text)
                groups.append(group)
        if not captions:
            raise ValueError(f"{reader.path}: no row has a caption in column {caption_column} (give the "
                             f"evaluation captions there or in a valid_file JSON)")
        return cls(keys, captions, groups)


def prefixed(text: str, prefix: str = "") -> str:
    return prefix + text


class CaptionedRows:
    """What the retrieval datasets share: an optional caption column, required in training only,
    tokenised through the task's ``caption`` function; batches get ``src_tokens`` when every row has one.

    The dataset sets ``tokenizer``, ``caption`` and ``require_text``.
    """

    def caption_tokens(self, row, column: str):
        """The row's caption as token ids, or None (a ValueError when training needs one)."""
        text = row.get(column, "")
        if not text.strip():
            if self.require_text:
                raise ValueError("empty caption")
            return None
        return self.tokenizer.encode(self.caption(text), clean=True)

    def add_caption_tokens(self, samples, net_input) -> None:
        if all(s.get("source_text") is not None for s in samples):
            net_input["src_tokens"] = collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad)
