"""MTEB tasks over the real media of ``run_scripts/fetch_real_media.sh`` (the Tux Paint stamps), offline.

They are ordinary MTEB task classes (``AbsTaskRetrieval``, ``AbsTaskClassification``) whose ``load_data``
builds the dataset from the local cache instead of the Hugging Face Hub, in the layout MTEB's own
loaders produce (``{"default": {"test": {"corpus", "queries", "relevant_docs", "top_ranked"}}}`` for
retrieval, a ``DatasetDict`` of ``train`` / ``test`` for classification); MTEB's evaluation loop, scores
and result files do the rest.  Images are ``datasets.Image`` columns (decoded by PIL); sounds are stored
decoded, as MTEB's ``AudioInputItem`` (``{"array", "sampling_rate"}``), not as a ``datasets.Audio``
column, whose decoding needs torchcodec (docs/EVALUATION.md).

* ``TuxPaintT2IRetrieval`` (image): each caption finds the stamps of its concept among all stamps.
* ``TuxPaintAT2IRetrieval`` (fused rows): a concept's sound and caption together, one fused query
  (``wrapper.py``), find its stamps: the paper's audio+text -> image composition.
* ``TuxPaintSoundClassification`` (audio): a stamp sound's category, by MTEB's logistic-regression probe.
* ``TuxPaintCaptionClassification`` (text): a caption's category, by the same probe.

Categories are the stamps' top folders (``animals``, ``food``, ...); those with fewer than
``MIN_PER_CATEGORY`` items are left out; the probe's train/test halves are split per category with seed 0.
"""
import collections
import logging
import os
from typing import List, Optional

from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

from ..data_utils.stamps import square_on_white
from .tuxpaint import (
    DEBIAN_VERSION,
    Concept,
    fetched_version,
    frequent,
    read_concepts,
    sound_arrays,
    split_by_label,
    stamps_folder,
)

logger = logging.getLogger(__name__)

MIN_PER_CATEGORY = 6
AUDIO_FEATURE = {"array": Sequence(Value("float32")), "sampling_rate": Value("int32")}
_SOURCE = ("the Tux Paint stamps (Debian tuxpaint-stamps-default, fetched by run_scripts/fetch_real_media.sh): "
           "cut-out photographs and drawings with human-written captions, about a fifth with a recorded sound")


def _metadata(name: str, description: str, **fields) -> TaskMetadata:
    return TaskMetadata(
        name=name, description=f"{description} Data: {_SOURCE}.",
        reference="https://packages.debian.org/tuxpaint-stamps-default",
        dataset={"path": "debian/tuxpaint-stamps-default", "revision": DEBIAN_VERSION},
        eval_splits=["test"], eval_langs=["eng-Latn"], date=("2002-01-01", "2022-06-04"),
        license="https://www.gnu.org/licenses/old-licenses/gpl-2.0.html", annotations_creators="human-annotated",
        dialect=[], sample_creation="found", bibtex_citation="", **fields)


class _TuxPaintData:
    """Reads the stamps from the real-media cache (``media``, default ``$ONE_PEACE_REAL_MEDIA`` or
    ``~/.cache/one_peace/real_media``); images are ``image_size`` pixels square; ``per_category`` keeps
    the first concepts of each category only (a smaller run, e.g. in CI; default all)."""

    def __init__(self, media: Optional[str] = None, image_size: int = 256, per_category: Optional[int] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if per_category is not None and int(per_category) < 1:
            raise ValueError(f"per_category must be >= 1, got {per_category}")
        self.media = media
        self.image_size = int(image_size)
        self.per_category = None if per_category is None else int(per_category)

    def load_data(self, num_proc=None, *, timer=None, **kwargs) -> None:
        if self.data_loaded:
            return
        folder = stamps_folder(self.media)
        version = fetched_version(folder)
        if version != DEBIAN_VERSION:
            logger.warning("%s holds tuxpaint-stamps-default %s; %s is defined on %s, so its scores are not "
                           "comparable with runs on that version", folder, version, self.metadata.name, DEBIAN_VERSION)
        self.dataset = self.build(folder, read_concepts(folder))
        self.data_loaded = True

    def build(self, folder: str, concepts: List[Concept]):
        raise NotImplementedError

    def limited(self, concepts: List[Concept]) -> List[Concept]:
        """The first ``per_category`` of ``concepts`` in each category, in their order."""
        if self.per_category is None:
            return list(concepts)
        seen = collections.Counter()
        kept = []
        for concept in concepts:
            seen[concept.category] += 1
            if seen[concept.category] <= self.per_category:
                kept.append(concept)
        return kept

    def stamp_corpus(self, folder: str, concepts: List[Concept]) -> Dataset:
        ids, images = [], []
        for n, concept in enumerate(concepts):
            for j, rel in enumerate(concept.images):
                path = os.path.join(folder, rel)
                try:
                    images.append(square_on_white(path, self.image_size))
                except OSError as exc:
                    raise ValueError(f"stamp {path} cannot be read: {exc}") from None
                ids.append(f"i{n:04d}_{j}")
        return Dataset.from_dict({"id": ids, "image": images}, features=Features({"id": Value("string"),
                                                                                  "image": Image()}))


def _relevant(concepts: List[Concept], queries: List[int]) -> dict:
    return {f"c{n:04d}": {f"i{n:04d}_{j}": 1 for j in range(len(concepts[n].images))} for n in queries}


class TuxPaintT2IRetrieval(_TuxPaintData, AbsTaskRetrieval):
    metadata = _metadata(
        "TuxPaintT2IRetrieval", "Find the stamps of a caption's concept among all stamps (text to image).",
        type="Any2AnyRetrieval", category="t2i", modalities=["text", "image"], main_score="ndcg_at_10",
        task_subtypes=["Image Text Retrieval"])

    def build(self, folder, concepts):
        concepts = self.limited(concepts)
        rows = list(range(len(concepts)))
        queries = Dataset.from_dict({"id": [f"c{n:04d}" for n in rows], "text": [concepts[n].caption for n in rows]})
        return {"default": {"test": {"corpus": self.stamp_corpus(folder, concepts), "queries": queries,
                                     "relevant_docs": _relevant(concepts, rows), "top_ranked": None}}}


class TuxPaintAT2IRetrieval(_TuxPaintData, AbsTaskRetrieval):
    metadata = _metadata(
        "TuxPaintAT2IRetrieval", "Find the stamps of a concept from its recorded sound and its caption together "
        "(one fused audio+text query) among all stamps.",
        type="Any2AnyRetrieval", category="at2i", modalities=["audio", "text", "image"], main_score="ndcg_at_10",
        task_subtypes=["Cross-Modal Retrieval"])

    def build(self, folder, concepts):
        asked = {c.key for c in self.limited([c for c in concepts if c.sound])}
        shown = asked | {c.key for c in self.limited(concepts)}  # the corpus holds every asked concept
        concepts = [c for c in concepts if c.key in shown]
        rows = [n for n, c in enumerate(concepts) if c.key in asked]
        queries = Dataset.from_dict(
            {"id": [f"c{n:04d}" for n in rows], "text": [concepts[n].caption for n in rows],
             "audio": sound_arrays(folder, [concepts[n] for n in rows])},
            features=Features({"id": Value("string"), "text": Value("string"), "audio": AUDIO_FEATURE}))
        return {"default": {"test": {"corpus": self.stamp_corpus(folder, concepts), "queries": queries,
                                     "relevant_docs": _relevant(concepts, rows), "top_ranked": None}}}


def _probe_splits(columns: dict, labels: List[str], features: Features) -> DatasetDict:
    train, test = split_by_label(labels)
    data = dict(columns, label=labels)
    return DatasetDict({name: Dataset.from_dict({k: [v[i] for i in rows] for k, v in data.items()}, features=features)
                        for name, rows in (("train", train), ("test", test))})


class TuxPaintSoundClassification(_TuxPaintData, AbsTaskClassification):
    metadata = _metadata(
        "TuxPaintSoundClassification", f"The category of a stamp's recorded sound (animals, seasonal, household, "
        f"...; categories with at least {MIN_PER_CATEGORY} sounds), by a logistic-regression probe on the "
        "embeddings; train and test are per-category halves.",
        type="AudioClassification", category="a2c", modalities=["audio"], main_score="accuracy",
        task_subtypes=["Environment Sound Classification"], domains=["AudioScene"])
    input_column_name = "audio"
    label_column_name = "label"

    def build(self, folder, concepts):
        keep = frequent([c.category for c in concepts if c.sound], MIN_PER_CATEGORY)
        chosen = self.limited([c for c in concepts if c.sound and c.category in keep])
        # ``sound`` (the file, relative to tuxpaint/) records where each clip came from; MTEB reads audio and label
        return _probe_splits({"audio": sound_arrays(folder, chosen), "sound": [c.sound for c in chosen]},
                             [c.category for c in chosen],
                             Features({"audio": AUDIO_FEATURE, "sound": Value("string"), "label": Value("string")}))


class TuxPaintCaptionClassification(_TuxPaintData, AbsTaskClassification):
    metadata = _metadata(
        "TuxPaintCaptionClassification", f"The category of a stamp's caption (animals, food, plants, town, ...; "
        f"categories with at least {MIN_PER_CATEGORY} captions), by a logistic-regression probe on the "
        "embeddings; train and test are per-category halves.",
        type="Classification", category="t2c", modalities=["text"], main_score="accuracy",
        task_subtypes=["Topic classification"])
    input_column_name = "text"
    label_column_name = "label"

    def build(self, folder, concepts):
        keep = frequent([c.category for c in concepts], MIN_PER_CATEGORY)
        chosen = self.limited([c for c in concepts if c.category in keep])
        return _probe_splits({"text": [c.caption for c in chosen]}, [c.category for c in chosen],
                             Features({"text": Value("string"), "label": Value("string")}))


LOCAL_TASKS = {cls.metadata.name: cls for cls in (TuxPaintT2IRetrieval, TuxPaintAT2IRetrieval,
                                                  TuxPaintSoundClassification, TuxPaintCaptionClassification)}
