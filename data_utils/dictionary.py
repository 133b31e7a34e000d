"""A fairseq-compatible token dictionary (same file format, same ids), without fairseq.

Ids must equal ``fairseq.data.Dictionary`` for the same ``dict.txt``: the four specials
``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3 come first, then one symbol per line.
"""
import re
from typing import Iterable, List, Optional

import torch

_SPACE = re.compile(r"\s+")  # fairseq's tokenize_line normaliser


class Dictionary:
    """Symbol <-> id mapping; ``Dictionary.load('dict.txt')`` reads ``symbol count`` lines."""

    def __init__(self, bos="<s>", pad="<pad>", eos="</s>", unk="<unk>",
                 extra_special_symbols: Optional[Iterable[str]] = None):
        self.bos_word, self.pad_word, self.eos_word, self.unk_word = bos, pad, eos, unk
        self.symbols: List[str] = []
        self.count: List[int] = []
        self.indices = {}
        self.bos_index = self.add_symbol(bos)
        self.pad_index = self.add_symbol(pad)
        self.eos_index = self.add_symbol(eos)
        self.unk_index = self.add_symbol(unk)
        for sym in extra_special_symbols or ():
            self.add_symbol(sym)
        self.nspecial = len(self.symbols)

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def load(cls, path: str) -> "Dictionary":
        d = cls()
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.readlines()
        except UnicodeError as exc:
            raise ValueError(f"{path}: dictionary is not valid UTF-8 ({exc})") from None
        d.add_from_lines(lines, source=path)
        return d

    @classmethod
    def from_symbols(cls, symbols: Iterable[str]) -> "Dictionary":
        """Build from a symbol list; a leading copy of the 4 specials (as saved in fixtures) is skipped."""
        d = cls()
        symbols = list(symbols)
        if symbols[: d.nspecial] == d.symbols:
            symbols = symbols[d.nspecial:]
        for sym in symbols:
            d.add_symbol(sym)
        return d

    def add_from_lines(self, lines: Iterable[str], source: str = "<lines>") -> None:
        for lineno, raw in enumerate(lines, start=1):
            line = raw.rstrip()
            try:
                word, field = line.rsplit(" ", 1)
                overwrite = field == "#fairseq:overwrite"
                if overwrite:
                    word, field = word.rsplit(" ", 1)
                count = int(field)
            except ValueError:
                raise ValueError(f"{source}, line {lineno}: expected '<symbol> <count> [flags]', "
                                 f"got {raw.rstrip(chr(10))!r}") from None
            if word in self.indices and not overwrite:
                raise ValueError(f"{source}, line {lineno}: duplicate symbol {word!r} "
                                 "(append '#fairseq:overwrite' to allow it)")
            self.add_symbol(word, n=count, overwrite=overwrite)

    def add_symbol(self, word: str, n: int = 1, overwrite: bool = False) -> int:
        if word in self.indices and not overwrite:
            idx = self.indices[word]
            self.count[idx] += n
            return idx
        idx = len(self.symbols)
        self.indices[word] = idx
        self.symbols.append(word)
        self.count.append(n)
        return idx

    # ---- lookup ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.symbols)

    def __getitem__(self, idx: int) -> str:
        idx = int(idx)
        return self.symbols[idx] if 0 <= idx < len(self.symbols) else self.unk_word

    def __contains__(self, sym: str) -> bool:
        return sym in self.indices

    def __eq__(self, other) -> bool:
        return isinstance(other, Dictionary) and self.indices == other.indices

    def index(self, sym: str) -> int:
        return self.indices.get(sym, self.unk_index)

    def bos(self) -> int:
        return self.bos_index

    def pad(self) -> int:
        return self.pad_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    # ---- encoding --------------------------------------------------------------------
    def encode_line(self, line: str, append_eos: bool = False) -> torch.LongTensor:
        """Whitespace-split ``line`` and map each symbol to its id (unknown -> ``<unk>``)."""
        words = _SPACE.sub(" ", line).strip().split()
        ids = [self.index(w) for w in words]
        if append_eos:
            ids.append(self.eos_index)
        return torch.tensor(ids, dtype=torch.long)

    def string(self, tensor, include_eos: bool = False, separator: str = " ") -> str:
        """Ids -> symbols joined by ``separator``; BOS (and EOS unless asked) dropped, as fairseq.

        Pads are kept (fairseq does the same); strip them first for padded batches.
        """
        if torch.is_tensor(tensor) and tensor.dim() == 2:
            return "\n".join(self.string(t, include_eos, separator) for t in tensor)
        skip = {self.bos_index}
        if not include_eos:
            skip.add(self.eos_index)
        return separator.join(self[int(i)] for i in tensor if int(i) not in skip)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for sym, cnt in zip(self.symbols[self.nspecial:], self.count[self.nspecial:]):
                fh.write(f"{sym} {cnt}\n")
