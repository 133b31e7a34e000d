"""Zero-shot image classification with a retrieval-type (image + text) model, CLIP-style.

Each class name is put into every prompt template (``"a photo of a {}."``); the class's embedding is
the mean of its L2-normalised prompt embeddings, L2-normalised again.  An image's class scores are
``softmax(logit_scale * image_embedding @ class_embeddings.T)``.

Template sets (``templates=``): ``"clip80"`` -- the 80 ImageNet prompts of CLIP (Radford et al. 2021,
the ``imagenet_templates`` of its zero-shot notebook), ``"default"`` -- the 7 of them CLIP's notebook
selected as a small ensemble, a text file with one template per line, or a list of strings.  Every
template holds one ``{}`` for the class name.
"""
import os
from typing import Callable, List, Sequence, Union

import torch
import torch.nn.functional as F

CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
CLIP_SELECTED_TEMPLATES = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)
TEMPLATE_SETS = {"clip80": CLIP_IMAGENET_TEMPLATES, "default": CLIP_SELECTED_TEMPLATES}


def resolve_templates(templates: Union[None, str, os.PathLike, Sequence[str]] = None) -> List[str]:
    """A template set's name, a file (one template per line) or templates -> checked list of templates."""
    source = "templates"
    if templates is None:
        templates = "default"
    if isinstance(templates, (str, os.PathLike)):
        name = os.fspath(templates)
        if name in TEMPLATE_SETS:
            templates = TEMPLATE_SETS[name]
        elif os.path.isfile(name):
            with open(name, encoding="utf-8") as fh:
                templates, source = [line.rstrip("\n") for line in fh if line.strip()], name
        else:
            raise ValueError(f"templates {name!r} is neither a template set ({', '.join(TEMPLATE_SETS)}) nor a file")
    templates = list(templates)
    if not templates:
        raise ValueError(f"{source}: no templates")
    for i, template in enumerate(templates):
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"{source}[{i}] = {template!r}: a template holds exactly one '{{}}' for the class name")
    return templates


def class_embeddings(encode_texts: Callable[[List[str]], torch.Tensor], class_names: Sequence[str],
                     templates=None, batch_size: int = 256) -> torch.Tensor:
    """(C, D) class embeddings: per class the mean of its L2-normalised prompt embeddings, re-normalised.

    ``encode_texts(list of strings) -> (N, D)`` embeds a batch of prompts (e.g. the hub's text path)."""
    templates = resolve_templates(templates)
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class_names[{i}] = {name!r} is not a non-empty string")
    prompts = [template.format(name) for name in names for template in templates]
    chunks = [F.normalize(encode_texts(prompts[i:i + batch_size]).float(), dim=-1)
              for i in range(0, len(prompts), batch_size)]
    per_prompt = torch.cat(chunks).view(len(names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def zero_shot_logits(image_embeddings: torch.Tensor, class_embeds: torch.Tensor,
                     logit_scale: float = 100.0) -> torch.Tensor:
    """(B, C) class logits: ``logit_scale`` times the cosine similarities."""
    return logit_scale * F.normalize(image_embeddings.float(), dim=-1) @ class_embeds.float().T


def top_k(logits: torch.Tensor, k: int = 5):
    """(top-k probabilities, top-k class indices), each (B, k): softmax over all classes, ``k`` capped
    at the number of classes."""
    return logits.float().softmax(dim=-1).topk(min(k, logits.size(-1)), dim=-1)
