"""Decoding the next batch of files while the model embeds the current one (``one-peace-index``).

One worker thread runs ``plan(chunk)`` (header reads, then ``hub.process``: decoding and preprocessing)
for batch k+1 while the caller embeds batch k; PIL, libsndfile and PyAV release the GIL while they
decode.  The caller still embeds and commits the batches in order, through the same ``embed_fn``
(``embed.embed``): the hub it is handed returns the prepared ``net_input`` when asked to process exactly
the prepared items, and re-raises the worker's error otherwise raised there, so a batch with a bad file
is split and reported file by file as before.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Sequence, Tuple


class PreparedHub:
    """``hub`` whose next ``process(modality, items)`` of the prepared items returns (or raises) what the
    worker got; every other call and attribute goes to ``hub``."""

    def __init__(self, hub, modality: str, items: Sequence, outcome: Tuple[bool, object]):
        self._hub = hub
        self._prepared = (modality, list(items), outcome)

    def process(self, modality: str, items):
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == modality and prepared[1] == list(items):
            ok, value = prepared[2]
            if not ok:
                raise value
            return value
        return self._hub.process(modality, items)

    def __getattr__(self, name: str):
        return getattr(self._hub, name)


def process_outcome(hub, modality: str, items: Sequence) -> Tuple[bool, object]:
    """``(True, net_input)`` or ``(False, the exception)`` of ``hub.process(modality, items)``."""
    if not items:
        return True, None
    try:
        return True, hub.process(modality, list(items))
    except Exception as exc:  # noqa: BLE001 - handed back to the caller, which splits the batch
        return False, exc


def planned_ahead(chunks: List, plan: Callable) -> Iterator[Tuple[object, object]]:
    """``(chunk, plan(chunk))`` in order, ``plan`` of the next chunk running on a worker thread meanwhile.
    An exception of ``plan`` surfaces when its chunk is reached; leaving the loop early (an error, a
    KeyboardInterrupt) drops the pending plan without waiting for the rest."""
    if not chunks:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="one-peace-decode")
    try:
        pending = pool.submit(plan, chunks[0])
        for k, chunk in enumerate(chunks):
            result = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(plan, chunks[k + 1])
            yield chunk, result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
