"""An opened index: its faiss indexes (rebuilt from SQLite when stale), the checkpoint that built
it (loaded on first query, identity checked), and nearest-neighbour search per modality."""
import logging
import os
import threading
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..models.checkpoint_io import is_checkpoint
from . import vector_index
from .embed import bpe_dir_for, embed, load_hub
from .filters import Filters, allowed_ids
from .identity import verify_checkpoint
from .ranking import Allowed, rank_page
from .scan import TSV_EXTENSION, check_modalities, modality_of, query_extensions, read_text_file
from .store import IndexStore

logger = logging.getLogger(__name__)


def faiss_path(index_dir: str, modality: str) -> str:
    return os.path.join(index_dir, "faiss", f"{modality}.faiss")


def build_faiss(store: IndexStore, modality: str, dim: int, options: vector_index.IndexOptions,
                write: bool = True):
    """Build ``modality``'s faiss index from the stored vectors (and save it, recording the version)."""
    version = store.version(modality)
    ids, vectors = store.vectors(modality, dim)
    kind = vector_index.resolve_type(options, len(ids))
    index = vector_index.build(vectors, ids, kind, options)
    if write:
        try:
            vector_index.save(index, faiss_path(store.dir, modality))
            saved = {"version": version, "type": kind, "count": int(len(ids))}
            if kind == "ivf":  # the lists really built (--nlist is clamped to the vectors there are)
                saved["nlist"] = int(vector_index.faiss().downcast_index(index).nlist)
            store.set(f"faiss:{modality}", saved)
        except OSError as exc:  # a read-only index directory still searches (from memory)
            logger.warning("cannot save the %s faiss index in %s: %s", modality, store.dir, exc)
    return index


class SearchIndex:
    def __init__(self, index_dir: str, checkpoint: Optional[str] = None, device: Optional[str] = None,
                 dtype: Optional[str] = None, bpe_dir: Optional[str] = None,
                 options: Optional[vector_index.IndexOptions] = None, needs_model: bool = True):
        self.store = IndexStore(index_dir)
        self.dir = self.store.dir
        self.model = self.store.get("model")
        if self.model is None:
            raise ValueError(f"index {self.dir} holds no embeddings yet (its first one-peace-index run embedded "
                             "nothing)")
        self.dim = int(self.model["dim"])
        self.options = options or vector_index.IndexOptions.from_dict(self.store.get("index_options"))
        self.checkpoint, self.device, self.dtype = checkpoint, device, dtype
        # --bpe-dir, else the recorded folder (else $ONE_PEACE_BPE_DIR if it lost its files): checked now
        self.needs_model = needs_model  # False: stored vectors only (near-duplicates), no BPE check, no model
        self.bpe_dir = bpe_dir_for(bpe_dir, self.model.get("bpe_dir"), self.dir) if needs_model else None
        if checkpoint is not None:  # refuse a wrong checkpoint before any query
            verify_checkpoint(self.model, checkpoint, self.dir)
        self._hub = None
        self._faiss: Dict[str, tuple] = {}
        self._allowed: OrderedDict[tuple, Allowed] = OrderedDict()  # filter -> allowed ids, per index version
        self._ids: Dict[str, tuple] = {}  # modality -> (version, its vector ids)
        self._lock = threading.Lock()  # one model call / faiss rebuild at a time

    # ---- the model -------------------------------------------------------------------------
    @property
    def hub(self):
        if self._hub is None:
            if not self.needs_model:
                raise RuntimeError("this SearchIndex was opened without its model (needs_model=False)")
            path = self.checkpoint or self.model["checkpoint"]
            if not is_checkpoint(path):
                raise FileNotFoundError(f"the checkpoint that built {self.dir} is not at {path} any more: pass "
                                        "--checkpoint with its new location")
            if self.checkpoint is None:  # the recorded path may now hold another file
                verify_checkpoint(self.model, path, self.dir)
            self._hub = load_hub(path, self.model["model_type"], self.dtype or self.model["dtype"], self.device,
                                 self.bpe_dir, self.model["modalities"])
        return self._hub

    def embed_text(self, text: str) -> np.ndarray:
        with self._lock:
            vectors, _, failed = embed(self.hub, "text", [text])
        if failed:
            raise ValueError(f"cannot embed the query text: {failed[0][1]}")
        return vectors[0]

    def embed_file(self, path: str, modality: Optional[str] = None) -> tuple:
        """(vector, modality) of a query file; the modality from its extension unless given."""
        modality = modality or modality_of(path)
        if modality is None or path.lower().endswith(TSV_EXTENSION):  # a TSV is many texts, not one query
            raise ValueError(f"cannot tell the modality of {os.path.basename(path)!r} from its extension "
                             f"({' '.join(query_extensions())})")
        if modality == "text":  # a text file is read here: the text branch embeds strings
            return self.embed_text(read_text_file(path)), "text"
        if modality not in self.model["modalities"]:
            raise ValueError(f"the index's checkpoint has no {modality} branch (it has "
                             f"{', '.join(self.model['modalities'])})")
        with self._lock:
            vectors, _, failed = embed(self.hub, modality, [path])
        if failed:
            raise ValueError(f"cannot read the query {modality} file: {failed[0][1]}")
        return vectors[0], modality

    # ---- faiss -------------------------------------------------------------------------------
    def modalities(self) -> List[str]:
        return self.store.modalities()

    def faiss_index(self, modality: str):
        """The current faiss index of ``modality``: the saved one if it matches the stored vectors'
        version, else rebuilt (an interrupted indexer, or one still running)."""
        version = self.store.version(modality)
        cached = self._faiss.get(modality)
        if cached and cached[0] == version:
            return cached[1]
        with self._lock:
            saved = self.store.get(f"faiss:{modality}") or {}
            path = faiss_path(self.dir, modality)
            if saved.get("version") == version and os.path.isfile(path):
                index = vector_index.load(path)
            else:
                logger.info("%s faiss index is stale or missing: rebuilding from the stored vectors", modality)
                index = build_faiss(self.store, modality, self.dim, self.options, write=os.access(self.dir, os.W_OK))
            vector_index.set_search_params(index, self.options)
            self._faiss[modality] = (version, index)
        return index

    def allowed(self, modality: str, filters: Filters) -> Allowed:
        """The vector ids of ``modality`` that pass ``filters`` (SQLite), kept while the index does not
        change: the next page of a query, or another query with the same filters, reuses them."""
        key = (modality, self.store.version(modality), filters.key())
        with self._lock:
            if key in self._allowed:
                self._allowed.move_to_end(key)
                return self._allowed[key]
        cached = self._ids.get(modality)
        if cached is None or cached[0] != key[1]:  # the modality's ids: read once per version
            cached = self._ids[modality] = (key[1], self.store.vector_ids(modality))
        found = Allowed(allowed_ids(self.store.db, filters, cached[1]))
        with self._lock:
            self._allowed[key] = found
            while len(self._allowed) > 8:  # each holds ids (and, if few, their vectors)
                self._allowed.popitem(last=False)
        return found

    def search(self, vector: np.ndarray, modalities: Optional[Sequence[str]] = None, k: int = 10) -> Dict[str, List]:
        """Top ``k`` of each modality: ``{modality: [{rank, score, id, path, row, text, ...}]}``."""
        return self.search_pages(vector, modalities, k)[0]

    def search_pages(self, vector: np.ndarray, modalities: Optional[Sequence[str]] = None, limit: int = 10,
                     offset: int = 0, filters: Optional[Filters] = None,
                     min_score: Optional[float] = None) -> Tuple[Dict[str, List], Dict[str, Dict]]:
        """(``{modality: [hits of ranks offset+1 .. offset+limit]}``, ``{modality: {offset, limit, has_more,
        total}}``); each hit is its vector's record (``IndexStore.lookup``) with ``score`` and ``rank``.

        Scores of different modalities are not comparable (the modality gap: a text query scores other
        texts far higher than any image), so each modality keeps its own ranking."""
        present = self.modalities()
        wanted = list(modalities) if modalities else present
        # a modality indexed then unregistered still searches (its vectors are stored)
        check_modalities(m for m in wanted if m not in present)
        filtered = filters is not None and filters.active()
        results, pages = {}, {}
        for modality in wanted:
            if modality not in present:
                results[modality], pages[modality] = [], {"offset": offset, "limit": limit, "has_more": False,
                                                          "total": 0}
                continue
            page = rank_page(self.faiss_index(modality), vector, offset, limit,
                             allowed=self.allowed(modality, filters) if filtered else None, min_score=min_score,
                             options=self.options, vectors_of=lambda ids: self.store.vectors_by_id(ids, self.dim))
            records = self.store.lookup([i for i, _ in page.hits])
            hits = [dict(records[i], score=s) for i, s in page.hits if i in records]
            for rank, hit in enumerate(hits, start=offset + 1):
                hit["rank"] = rank
            results[modality], pages[modality] = hits, page.info()
        return results, pages
