"""The hub's task methods: grounding, VQA, NLVR2, zero-shot classification, joint vision-language logits.

Each method checks first that the loaded checkpoint is the kind it needs (its model type, head type and
fine-tuning task) and otherwise names the checkpoint it has and what to use instead: a RefCOCO
checkpoint never answers questions with box coordinates.  Images are paths or PIL images, as everywhere
in the hub (``data_utils/processors.py:load_images``).
"""
import os
from typing import Dict, Optional

import torch

# fine-tuning task -> the hub method its head serves (the checkpoint's ``task._name``)
METHOD_OF_TASK = {"refcoco": "ground", "vqa": "answer", "nlvr2": "verify"}
WHAT = {"ground": "a grounding (RefCOCO/+/g) checkpoint", "answer": "a VQA checkpoint",
        "verify": "an NLVR2 checkpoint"}


def label_names(label_map, source: str = "label_map") -> Dict[int, str]:
    """``{class id: name}`` from a dict with int or str keys (JSON gives str), a list of names, or a
    JSON file holding either; a value that is a list names the class by its first entry."""
    from ..data_utils.labels import label_names_from, load_label_names

    if isinstance(label_map, (str, os.PathLike)):
        return load_label_names(os.fspath(label_map), option=source)
    if isinstance(label_map, (dict, list, tuple)):
        return label_names_from(label_map, source)
    raise TypeError(f"{source} must be a dict {{class id: name}}, a list of names or a JSON file path, "
                    f"got {type(label_map).__name__}")


class TaskMethods:
    """Mixed into :class:`~one_peace.hub.OnePeaceHubInterface`."""

    def _describe(self) -> str:
        head = getattr(self.model, "head_type", "?")
        return f"{self.model_type} (head_type {head}, fine-tuned for task {self.task_name!r})"

    def _require_vl_classifier(self, call: str) -> int:
        """The checkpoint serves ``call`` (a key of :data:`WHAT`): its number of outputs, else ValueError."""
        head = getattr(self.model, "classify_head", None)
        if head is None or getattr(self.model, "head_type", None) != "vl":
            raise ValueError(f"{call} needs {WHAT[call]} (model_type='one_peace_classify', head_type vl); "
                             f"this one is {self._describe()}")
        serves = METHOD_OF_TASK.get(self.task_name)
        if serves is not None and serves != call:
            raise ValueError(f"{call} needs {WHAT[call]}; this one is {self._describe()}: use hub.{serves}(...)")
        classes = head.classifier[-1].out_features
        if call == "ground" and classes != 4:
            raise ValueError(f"ground needs a grounding (RefCOCO) checkpoint with 4 outputs; this one has {classes}")
        if call == "verify" and not getattr(self.model, "use_two_images", False):
            raise ValueError(f"verify needs an NLVR2 checkpoint (use_two_images); this one is {self._describe()}")
        return classes

    def _paired(self, images, texts, what: str, images_name: str = "images"):
        from ..data_utils.processors import as_list

        images, texts = as_list(images, images_name), as_list(texts, what)
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} {images_name} but {len(texts)} {what}: give one per image")
        return images, texts

    def ground(self, images, texts) -> torch.Tensor:
        """The box each phrase refers to in its image: (N, 4) xyxy in the pixels of the image as loaded
        (a RefCOCO/+/g checkpoint)."""
        from ..metrics.grounding import boxes_to_pixels

        self._require_vl_classifier("ground")
        images, texts = self._paired(images, texts, "texts")
        src_images, widths, heights = self.process_image(images, return_image_sizes=True)
        logits = self.extract_vl_features(src_images, self.process_text(texts))
        size = self.patch_image_size
        return boxes_to_pixels(logits.float().cpu(), size / widths.cpu().double(), size / heights.cpu().double(),
                               size).float()

    def answer(self, images, questions, k: int = 5, label_map=None):
        """Top-``k`` answers per (image, question) as ``[[(answer, score), ...], ...]`` (a VQA checkpoint);
        ``label_map``: ``{class id: answer}`` (int or str keys), a list of answers, or a JSON file of either
        (default: the task's ``label_file``)."""
        classes = self._require_vl_classifier("answer")
        names = label_names(label_map) if label_map is not None else getattr(self.task, "label_names", None)
        if not names:
            raise ValueError("answer needs the answer vocabulary: pass label_map= (JSON {class id: answer} or a "
                             "list of answers) or load a checkpoint whose task has a label_file")
        unknown = sorted(set(range(classes)) - set(names))
        if unknown:
            raise ValueError(f"label_map names {len(names)} answers but the checkpoint has {classes}; "
                             f"class ids without a name: {unknown[:10]}")
        images, questions = self._paired(images, questions, "questions")
        scores = torch.sigmoid(self.extract_vl_features(self.process_image(images),
                                                        self.process_text(questions)).float())
        top = scores.topk(min(k, classes), dim=-1)
        return [[(names[int(i)], float(v)) for v, i in zip(values, ids)]
                for values, ids in zip(top.values.cpu(), top.indices.cpu())]

    def verify(self, images, images_2, statements):
        """NLVR2: is each statement true of its pair of images?  ``[{"label": bool, "probability": P(true)},
        ...]`` (an NLVR2 checkpoint; class 0 is "true", as in the official NLVR2 data)."""
        self._require_vl_classifier("verify")
        images, statements = self._paired(images, statements, "statements")
        images_2, _ = self._paired(images_2, statements, "statements", images_name="images_2")
        with torch.no_grad():
            logits = self.model(src_images=self.process_image(images), src_images_2=self.process_image(images_2),
                                src_tokens=self.process_text(statements))
        p_true = torch.softmax(logits.float(), dim=-1)[:, 0].cpu()
        return [{"label": bool(p > 0.5), "probability": float(p)} for p in p_true]

    def extract_vl_features(self, src_images, src_tokens):
        """Joint vision-language pass of a classification model (e.g. grounding logits)."""
        if not self.is_classifier or getattr(self.model, "head_type", None) != "vl":
            raise ValueError("extract_vl_features needs a vision-language classification checkpoint "
                             f"(model_type='one_peace_classify', head_type vl); this one is {self._describe()}")
        net_input = self._checked_input("vl", {"src_images": src_images, "src_tokens": src_tokens})
        with torch.no_grad():
            return self.model(**net_input)

    # ---- zero-shot classification ---------------------------------------------------------------
    def zero_shot_classifier(self, class_names, templates=None, batch_size: int = 256) -> torch.Tensor:
        """(C, D) class embeddings for :meth:`zero_shot_classify` (``hub/zero_shot.py``: prompt
        templates -- ``"default"``, ``"clip80"``, a file or a list -- averaged and re-normalised)."""
        from .zero_shot import class_embeddings

        if self.is_classifier or not {"text", "image"} <= set(self.model.modalities):
            raise ValueError("zero-shot classification needs an image-text embedding checkpoint "
                             "(model_type='one_peace_retrieval' or 'one_peace_pretrain' with text and image); "
                             f"this one is {self._describe()} with {', '.join(self.model.modalities)}")
        return class_embeddings(lambda prompts: self.extract_text_features(self.process_text(prompts)),
                                class_names, templates, batch_size)

    def zero_shot_logits(self, images, classifier: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of images (paths or PIL images): ``logit_scale`` x cosine similarity to each row of
        ``classifier`` (from :meth:`zero_shot_classifier`)."""
        from .zero_shot import zero_shot_logits

        embeddings = self.extract_image_features(self.process_image(images))
        with torch.no_grad():
            scale = float(self.model.logit_scale_exp())
        return zero_shot_logits(embeddings, classifier.to(embeddings.device), scale)

    def zero_shot_classify(self, images, class_names, templates=None, k: int = 5,
                           classifier: Optional[torch.Tensor] = None):
        """Top-``k`` classes of each image (paths or PIL images) among ``class_names``, zero-shot.

        Returns one dict per image: ``{"classes": [class index, ...], "labels": [class name, ...],
        "scores": [probability, ...]}`` best first; probabilities are the softmax over all classes of
        ``logit_scale * cosine similarity``.  Pass ``classifier=hub.zero_shot_classifier(names, templates)``
        to reuse the class embeddings across calls (``class_names`` still names the classes)."""
        from ..data_utils.processors import as_list
        from .zero_shot import top_k

        names = as_list(class_names, "class_names")
        if classifier is None:
            classifier = self.zero_shot_classifier(names, templates)
        elif classifier.size(0) != len(names):
            raise ValueError(f"classifier has {classifier.size(0)} classes but {len(names)} class_names were given")
        top = top_k(self.zero_shot_logits(images, classifier), k)
        return [{"classes": ids, "labels": [names[i] for i in ids], "scores": values}
                for ids, values in zip(top.indices.cpu().tolist(), top.values.cpu().tolist())]
