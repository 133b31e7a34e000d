"""GPT-2 byte-level BPE (fairseq ``gpt2`` flavour) and the ONE-PEACE text tokenizer.

Text -> GPT-2 token ids written as a space-separated string (what fairseq's gpt2 BPE emits)
-> fairseq dictionary ids -> truncate -> EOS.  Run ``python -m one_peace.data_utils.bpe fetch``
to download the BPE files.
"""
import json
import os
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import regex
import torch

from .bpe_files import BPE_FILES, BPE_SHA256, ChecksumError, default_cache_dir, fetch_bpe_files, main, resolve_bpe_dir  # noqa: F401 - re-exported
from .dictionary import Dictionary  # noqa: F401 - re-exported
from .text import clean_caption

# GPT-2's pre-tokenisation pattern (contractions, letter runs, digit runs, other runs, spaces).
_GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# Dictionary symbols that are never BPE ids; fairseq treats them as word starts.
_SPECIAL_SYMBOLS = frozenset({"<s>", "<pad>", "</s>", "<unk>", "<mask>"})


@lru_cache
def _byte_to_unicode() -> Dict[int, str]:
    """Reversible byte -> printable unicode char map, so BPE never sees whitespace/control bytes."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _as_id(token: str) -> Optional[int]:
    """GPT-2 id of a token string, None if it is not a plain ASCII integer."""
    return int(token) if token.isascii() and token.isdigit() else None


class GPT2BPE:
    """GPT-2 byte-level BPE producing/consuming space-separated GPT-2 id strings."""

    def __init__(self, encoder_json: str, vocab_bpe: str):
        with open(encoder_json, encoding="utf-8") as fh:
            self.encoder: Dict[str, int] = json.load(fh)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(vocab_bpe, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        # First line is a version header, last is empty (same slicing as the reference reader).
        merges = [tuple(line.split()) for line in lines[1:-1]]
        self.ranks: Dict[Tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = _byte_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self._cache: Dict[str, List[str]] = {}

    def _merge(self, piece: str) -> List[str]:
        """Apply the merges to one pre-token (already byte-mapped), lowest rank first."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece)
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                rank = self.ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            merged, i = [], 0
            while i < len(word):  # merge every non-overlapping occurrence, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode_ids(self, text: str) -> List[int]:
        ids = []
        for token in _GPT2_PATTERN.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._merge(mapped))
        return ids

    def encode(self, text: str) -> str:
        return " ".join(str(i) for i in self.encode_ids(text))

    def decode(self, ids_str: str) -> str:
        """Inverse of ``encode``; non-numeric tokens (``<unk>``, ``<mask>``) are kept literally."""
        text = "".join(self.decoder.get(_as_id(t), t) for t in ids_str.split())
        data = bytearray(self.byte_decoder[c] if c in self.byte_decoder else ord("?") for c in text)
        return data.decode("utf-8", errors="replace")

    def is_beginning_of_word(self, token: str) -> bool:
        """True if ``token`` (a GPT-2 id string) starts a word, i.e. decodes with a leading space.

        Like fairseq's whole-word masking: dictionary specials, ``madeupword*`` fillers and
        anything that is not a GPT-2 id count as word starts.
        """
        if token in _SPECIAL_SYMBOLS or token.startswith("madeupword"):
            return True
        if _as_id(token) not in self.decoder:
            return True
        return self.decode(token).startswith(" ")


def word_start_table(dictionary: Dictionary, bpe: GPT2BPE) -> torch.BoolTensor:
    """Bool per dictionary id: does that symbol begin a word (fairseq ``get_whole_word_mask``)."""
    return torch.tensor([i < dictionary.nspecial or bpe.is_beginning_of_word(sym)
                         for i, sym in enumerate(dictionary.symbols)], dtype=torch.bool)


class TextTokenizer:
    """BPE + dictionary: text -> LongTensor of ids ending in EOS (no BOS; the model adds CLS)."""

    def __init__(self, bpe_dir: Optional[str] = None, max_src_length: int = 70,
                 dictionary: Optional[Dictionary] = None):
        bpe_dir = resolve_bpe_dir(bpe_dir)
        self.bpe_dir = bpe_dir
        self.bpe = GPT2BPE(os.path.join(bpe_dir, "encoder.json"), os.path.join(bpe_dir, "vocab.bpe"))
        self.dictionary = dictionary if dictionary is not None else Dictionary.load(
            os.path.join(bpe_dir, "dict.txt"))
        self.max_src_length = max_src_length
        self.pad = self.dictionary.pad()
        self.eos = self.dictionary.eos()
        self._word_starts: Optional[torch.BoolTensor] = None

    def _encode_raw(self, text: str) -> torch.LongTensor:
        ids = self.dictionary.encode_line(self.bpe.encode(" " + text), append_eos=False)
        ids = ids[: self.max_src_length]
        return torch.cat([ids, ids.new_tensor([self.eos])])

    @staticmethod
    def _check(text, original, allow_empty: bool = False) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(original).__name__}: {original!r}")
        if not allow_empty and not text.strip():
            raise ValueError(f"cannot encode empty or whitespace-only text: {original!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"text {original!r} is not encodable as UTF-8 ({err.reason})") from None

    def encode(self, text: str, clean: bool = False) -> torch.LongTensor:
        """Dataset encoding: [clean_caption] -> BPE(' ' + text) -> ids[:max_src_length] + EOS."""
        self._check(text, text)
        processed = clean_caption(text) if clean else text
        self._check(processed, text)
        return self._encode_raw(processed)

    def encode_hub(self, text: str, allow_empty: bool = False) -> torch.LongTensor:
        """Hub encoding (official ``process_text``): BPE(' ' + text.lower()), no other cleaning.  Empty or
        whitespace-only text is an error unless ``allow_empty``; then it is encoded as the official code does
        (the BPE of the spaces, then EOS)."""
        self._check(text, text, allow_empty)
        return self._encode_raw(text.lower())

    def decode(self, ids) -> str:
        """Ids (pads/EOS dropped) back to text, for debugging."""
        keep = [int(i) for i in ids if int(i) not in (self.pad, self.eos, self.dictionary.bos())]
        return self.bpe.decode(" ".join(self.dictionary[i] for i in keep)).strip()

    @property
    def word_starts(self) -> torch.BoolTensor:
        if self._word_starts is None:
            self._word_starts = word_start_table(self.dictionary, self.bpe)
        return self._word_starts

    def is_word_start(self, idx: int) -> bool:
        """Whole-word masking predicate on a dictionary id (out-of-range ids count as starts)."""
        idx = int(idx)
        table = self.word_starts
        return bool(table[idx]) if 0 <= idx < len(table) else True


if __name__ == "__main__":
    raise SystemExit(main())
