"""Hub interface with the official method names: load a checkpoint, embed, classify.

    from one_peace.models import from_pretrained
    hub = from_pretrained("one-peace.pt", device="cpu", dtype="float32")
    text = hub.extract_text_features(hub.process_text(["a dog", "an elephant"]))
    image = hub.extract_image_features(hub.process_image(["dog.jpg"]))
    similarity = image @ text.T
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch

from .checkpoint import load_checkpoint_file
from .modalities import get_modality, head_type_for, modality_names

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
MODEL_TYPES = ("one_peace_retrieval", "one_peace_classify", "one_peace_pretrain")


def _modalities_in(state_dict) -> List[str]:
    return [m for m in modality_names() if any(f"encoder_wrapper.{m}_adapter." in k for k in state_dict)]


def from_pretrained(model_name_or_path: str, model_type: str = "one_peace_retrieval", device=None,
                    dtype: str = "float32", bpe_dir: Optional[str] = None, allow_pickle: bool = False,
                    modalities: Optional[Sequence[str]] = None):
    """Load a ONE-PEACE checkpoint (official or ours) for inference.

    ``bpe_dir`` overrides the checkpoint's BPE directory (else the saved one, then
    ``$ONE_PEACE_BPE_DIR``, then the cache filled by ``python -m one_peace.data_utils.bpe fetch``).
    ``modalities`` (retrieval): the branches to build, default those the checkpoint has weights for;
    a modality it lacks starts as its registry hook says (``video`` from the image branch).
    """
    from .. import registry  # noqa: F401 - registers tasks/models (first: it guards fairseq's import)

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = os.path.expanduser(model_name_or_path)
    # Memory-mapped: tensors stay on disk until used; a bf16 load keeps them mapped (no copy).
    state = load_checkpoint_file(path, allow_pickle=allow_pickle, mmap=True)
    if state.get("cfg") is None:
        raise ValueError(f"{path} has no saved 'cfg'; it was not written by fairseq/ONE-PEACE")
    if bpe_dir is None:
        from ..data_utils.bpe_files import saved_bpe_dir_or_none

        bpe_dir = saved_bpe_dir_or_none((state["cfg"].get("task") or {}).get("bpe_dir"))
    task_overrides = {"bpe_dir": bpe_dir}
    if model_type == "one_peace_retrieval":
        # Embed every modality the checkpoint has weights for.
        task_overrides["head_type"] = head_type_for(modalities or _modalities_in(state["model"]))
    from fairseq import checkpoint_utils

    from ..fairseq_compat import prepare_state

    state = prepare_state(state, {"model": {"_name": model_type}, "task": task_overrides})
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from .deferred_init import loading_context

    # Built without initialising what the checkpoint provides; tensors land in dtype on device.
    with loading_context(DTYPES[dtype], device, files=path):
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], state=state)
    return OnePeaceHubInterface(models[0], task, cfg, device=device, dtype=DTYPES[dtype])


class OnePeaceHubInterface:
    def __init__(self, model, task, cfg, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.task = task
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_src_length = task.cfg.max_src_length
        self.patch_image_size = task.cfg.patch_image_size
        self.max_duration = task.cfg.max_duration

    @property
    def is_classifier(self) -> bool:
        return hasattr(self.model, "classify_head")

    # ---- any registered modality ----------------------------------------------------------
    def process(self, modality: str, items) -> Dict[str, torch.Tensor]:
        """Raw items (texts, paths, ...) -> the modality's ``net_input`` tensors on the hub's device."""
        spec = get_modality(modality)
        if spec.processor is None:
            raise ValueError(f"modality {modality!r} registers no hub processor")
        if modality not in self.model.modalities:
            raise ValueError(f"this checkpoint has no {modality} branch (it has {', '.join(self.model.modalities)})")
        return spec.processor(self, items)

    def extract_features(self, modality: str, **net_input) -> torch.Tensor:
        """Embeddings (retrieval/pretraining checkpoints) or logits (classification) of one modality."""
        get_modality(modality)
        with torch.no_grad():
            if self.is_classifier:
                return self.model(**net_input)
            return self.model.encode(modality, **net_input)

    def __getattr__(self, name: str):
        # process_<m> / extract_<m>_features for modalities registered beyond the official three.
        for prefix, suffix, method in (("process_", "", self.process), ("extract_", "_features", None)):
            if name.startswith(prefix) and name.endswith(suffix):
                modality = name[len(prefix):len(name) - len(suffix)] if suffix else name[len(prefix):]
                if modality in modality_names():
                    if method is not None:
                        return lambda items: method(modality, items)
                    return lambda **net_input: self.extract_features(modality, **net_input)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- preprocessing (official names) ------------------------------------------------------
    def process_text(self, texts: Sequence[str]) -> torch.LongTensor:
        return self.process("text", texts)["src_tokens"]

    def process_image(self, image_paths: Sequence[str], return_image_sizes: bool = False):
        from .preprocess import load_images

        images = load_images(image_paths)
        tensor = self.process("image", images)["src_images"]
        if return_image_sizes:
            widths = torch.tensor([img.width for img in images], device=self.device)
            heights = torch.tensor([img.height for img in images], device=self.device)
            return tensor, widths, heights
        return tensor

    def process_audio(self, audio_paths: Sequence[str]):
        net_input = self.process("audio", audio_paths)
        return net_input["src_audios"], net_input["audio_padding_masks"]

    def process_image_text_pairs(self, pairs, return_image_sizes=False):
        image_paths, texts = zip(*pairs)
        return self.process_image(list(image_paths), return_image_sizes), self.process_text(list(texts))

    # ---- features (official names) -----------------------------------------------------------
    def extract_text_features(self, src_tokens):
        return self.extract_features("text", src_tokens=src_tokens)

    def extract_image_features(self, src_images):
        return self.extract_features("image", src_images=src_images)

    def extract_audio_features(self, src_audios, audio_padding_masks):
        return self.extract_features("audio", src_audios=src_audios, audio_padding_masks=audio_padding_masks)

    # ---- task-specific helpers -----------------------------------------------------------------
    def _paired(self, images, texts, what: str):
        from .preprocess import as_list

        images, texts = as_list(images, "images"), as_list(texts, what)
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} {what}: give one per image")
        return images, texts

    def _require_classifier(self, outputs: Optional[int], call: str, kind: str):
        head = getattr(self.model, "classify_head", None)
        if head is None or getattr(self.model, "head_type", None) != "vl":
            raise ValueError(f"{call} needs a vision-language {kind} checkpoint (one_peace_classify, head_type vl); "
                             f"this one is {type(self.model).__name__} ({getattr(self.model, 'head_type', '?')})")
        classes = head.classifier[-1].out_features
        if outputs is not None and classes != outputs:
            raise ValueError(f"{call} needs a {kind} checkpoint with {outputs} outputs; this one has {classes}")
        return classes

    def ground(self, images, texts) -> torch.Tensor:
        """The box each phrase refers to in its image: (N, 4) xyxy in that image's own pixels
        (a RefCOCO/+/g checkpoint)."""
        from ..tasks.vl_tasks.refcoco import boxes_to_pixels

        self._require_classifier(4, "ground", "grounding (RefCOCO)")
        images, texts = self._paired(images, texts, "texts")
        src_images, widths, heights = self.process_image(images, return_image_sizes=True)
        with torch.no_grad():
            logits = self.model(src_images=src_images, src_tokens=self.process_text(texts))
        size = self.patch_image_size
        return boxes_to_pixels(logits.cpu(), size / widths.cpu().double(), size / heights.cpu().double(), size).float()

    def answer(self, images, questions, k: int = 5, label_map=None):
        """Top-``k`` answers per (image, question) as ``[[(answer, score), ...], ...]`` (a VQA checkpoint);
        ``label_map``: a JSON file or dict ``{class id: answer}`` (default: the task's ``label_file``)."""
        classes = self._require_classifier(None, "answer", "VQA")
        names = label_map if isinstance(label_map, dict) else None
        if isinstance(label_map, (str, os.PathLike)):
            from ..tasks.classification import load_label_names

            names = load_label_names(os.fspath(label_map), option="label_map")
        names = names or getattr(self.task, "label_names", None)
        if not names:
            raise ValueError("answer needs the answer vocabulary: pass label_map= (JSON {class id: answer}) or "
                             "load a checkpoint whose task has a label_file")
        images, questions = self._paired(images, questions, "questions")
        with torch.no_grad():
            scores = torch.sigmoid(self.model(src_images=self.process_image(images),
                                              src_tokens=self.process_text(questions)).float())
        top = scores.topk(min(k, classes), dim=-1)
        return [[(names.get(int(i), str(int(i))), float(v)) for v, i in zip(values, ids)]
                for values, ids in zip(top.values.cpu(), top.indices.cpu())]

    def zero_shot_classifier(self, class_names, templates=None, batch_size: int = 256) -> torch.Tensor:
        """(C, D) class embeddings for :meth:`zero_shot_classify` (``models/zero_shot.py``: prompt
        templates -- ``"default"``, ``"clip80"``, a file or a list -- averaged and re-normalised)."""
        from .zero_shot import class_embeddings

        if self.is_classifier or not {"text", "image"} <= set(self.model.modalities):
            raise ValueError("zero-shot classification needs an image-text embedding checkpoint (one_peace_retrieval "
                             f"or one_peace_pretrain with text and image); this one is {type(self.model).__name__} "
                             f"with {', '.join(self.model.modalities)}")
        return class_embeddings(lambda prompts: self.extract_text_features(self.process_text(prompts)),
                                class_names, templates, batch_size)

    def zero_shot_logits(self, images, classifier: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of images (paths or PIL images): ``logit_scale`` x cosine similarity to each row of
        ``classifier`` (from :meth:`zero_shot_classifier`)."""
        from .preprocess import as_list
        from .zero_shot import zero_shot_logits

        embeddings = self.extract_image_features(self.process("image", as_list(images, "images"))["src_images"])
        with torch.no_grad():
            scale = float(self.model.logit_scale_exp())
        return zero_shot_logits(embeddings, classifier.to(embeddings.device), scale)

    def zero_shot_classify(self, images, class_names, templates=None, k: int = 5, classifier=None):
        """Top-``k`` classes of each image (paths or PIL images) among ``class_names``, zero-shot.

        Returns one dict per image: ``{"classes": [class index, ...], "labels": [class name, ...],
        "scores": [probability, ...]}`` best first; probabilities are the softmax over all classes of
        ``logit_scale * cosine similarity``.  Pass ``classifier=hub.zero_shot_classifier(names, templates)``
        to reuse the class embeddings across calls (``class_names`` still names the classes)."""
        from .preprocess import as_list
        from .zero_shot import top_k

        names = as_list(class_names, "class_names")
        if classifier is None:
            classifier = self.zero_shot_classifier(names, templates)
        elif classifier.size(0) != len(names):
            raise ValueError(f"classifier has {classifier.size(0)} classes but {len(names)} class_names were given")
        top = top_k(self.zero_shot_logits(images, classifier), k)
        return [{"classes": ids, "labels": [names[i] for i in ids], "scores": values}
                for ids, values in zip(top.indices.cpu().tolist(), top.values.cpu().tolist())]

    def extract_vl_features(self, src_images, src_tokens):
        """Joint vision-language pass of a classification model (e.g. grounding logits)."""
        if not self.is_classifier:
            raise ValueError("extract_vl_features needs a one_peace_classify model (e.g. a grounding checkpoint)")
        with torch.no_grad():
            return self.model(src_images=src_images, src_tokens=src_tokens)
