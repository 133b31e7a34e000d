"""What a ``one-peace-index`` run tells: its summary (printed, or JSON with ``--json``) and its progress
(a bar on a terminal, else a line every 10 s)."""
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class Summary:
    index: str
    found: Dict[str, int] = field(default_factory=dict)
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    removed: int = 0
    skipped_failed: int = 0  # failed before and unchanged since
    embedded: int = 0
    vectors: int = 0
    failed: List[Dict[str, str]] = field(default_factory=list)
    over_max_pixels: int = 0  # refused by --max-pixels (each also in ``failed``, with the reason)
    truncated: List[Dict[str, str]] = field(default_factory=list)  # indexed up to --max-duration
    segments: int = 0  # vectors of a span of a long sound or video (start_s .. end_s)
    missing_roots: List[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole run
    load_seconds: float = 0.0  # loading the checkpoint
    embed_seconds: float = 0.0  # decoding + embedding + committing
    files_per_s: float = 0.0  # embedded (or failed) files per second of embed_seconds
    index_types: Dict[str, str] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    options: Dict = field(default_factory=dict)  # --modality / --tsv-column in force (recorded in the index)
    media_options: Dict = field(default_factory=dict)  # --exclude and the limits in force (recorded too)
    degenerate: List[Dict] = field(default_factory=list)  # collapsed modalities (health.py)
    interrupted: bool = False

    def lines(self) -> List[str]:
        found = ", ".join(f"{m} {n}" for m, n in sorted(self.found.items())) or "none"
        out = [f"one-peace-index: {self.index}",
               f"  found {sum(self.found.values())} files ({found}): {self.unchanged} unchanged, {self.new} new, "
               f"{self.changed} changed, {self.removed} removed",
               f"  embedded {self.embedded} files ({self.vectors} vectors) in {self.embed_seconds:.1f} s "
               f"({self.files_per_s:.2f} files/s; checkpoint loaded in {self.load_seconds:.1f} s, "
               f"{self.seconds:.1f} s in all)"]
        if self.skipped_failed:
            out.append(f"  {self.skipped_failed} files that failed before are unchanged and were not retried "
                       "(--retry-failed)")
        if self.segments:
            out.append(f"  {self.segments} of the vectors are segments of long sounds and videos")
        out.append(f"  failed: {len(self.failed)}" + (f" ({self.over_max_pixels} over --max-pixels)"
                                                        if self.over_max_pixels else ""))
        out += [f"    {f['path']}: {f['reason']}" for f in self.failed]
        if self.truncated:
            out.append(f"  truncated at --max-duration: {len(self.truncated)}")
            out += [f"    {f['path']}: {f['reason']}" for f in self.truncated]
        out += [f"  missing root (its files were kept): {r}" for r in self.missing_roots]
        out.append("  index: " + (", ".join(f"{m} {n} vectors ({self.index_types.get(m, '?')})"
                                            for m, n in sorted(self.counts.items())) or "empty"))
        if self.options.get("modality") or self.options.get("tsv_column"):
            out.append(f"  remembered for the next runs: --modality {','.join(self.options['modality'] or ['all'])}"
                       f" --tsv-column {self.options['tsv_column'] or '(default: text, else caption)'}")
        if self.media_options.get("exclude"):
            out.append("  remembered for the next runs: " + " ".join(f"--exclude {p!r}"
                                                                     for p in self.media_options["exclude"]))
        if self.interrupted:
            out.append("  interrupted: what was committed is kept; run again to continue")
        return out


class Progress:
    """tqdm on a terminal, else a line to stderr every ``every`` seconds (files, files/s, ETA)."""

    def __init__(self, total: int, mode: str = "auto", every: float = 10.0):
        self.total, self.done, self.start, self.every, self.last = total, 0, time.perf_counter(), every, 0.0
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self.bar = None
        if self.mode == "bar" and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", desc="embedding", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.mode == "lines" and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
            print(f"embedding: {self.done}/{self.total} files ({100 * self.done / max(self.total, 1):.0f}%), "
                  f"{rate:.2f} files/s, ETA {eta_text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
