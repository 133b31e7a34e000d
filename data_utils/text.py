"""Caption cleaning applied by the datasets before BPE (spec §5.3, ``process_text``)."""
import re
from typing import Optional

# Leading punctuation the official datasets drop (e.g. "... a dog" -> "a dog").
_LEADING_PUNCT = ",.!?*#:;~"
# Runs of >= 2 whitespace characters, or any single tab, become one space.
_SPACE_RUNS = re.compile(r"\s{2,}|\t")


def clean_caption(text: str, max_words: Optional[int] = None) -> str:
    """Lower-case, strip leading ``,.!?*#:;~``, collapse whitespace runs, strip.

    ``max_words`` keeps only the first N space-separated words (RefCOCO uses 70).
    """
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}: {text!r}")
    text = text.lower().lstrip(_LEADING_PUNCT)
    text = _SPACE_RUNS.sub(" ", text)
    text = text.strip()
    if max_words is not None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        text = " ".join(text.split(" ")[:max_words])
    return text
