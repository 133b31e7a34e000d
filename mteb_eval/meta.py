"""MTEB's ``ModelMeta`` of ONE-PEACE, and the loader that attaches it to an encoder of a checkpoint.

``ONE_PEACE`` describes the released model (``one-peace.pt`` of https://github.com/OFA-Sys/ONE-PEACE:
the 4B preset, 1536 wide, 40 layers, text, image and audio branches; video from the image branch,
``docs/VIDEO.md``).  ``load_encoder(checkpoint)`` builds the encoder and gives it this metadata with what
the loaded checkpoint itself has (parameters, width, branches), so a run of another checkpoint is never
reported as the released one's numbers, and a revision naming the weights: the first 12 hex digits of
the checkpoint's SHA-256 (the weights have no Hub revision).
"""
import hashlib
import logging
import os
from typing import Optional

from mteb.models.model_meta import ModelMeta, ScoringFunction

from .wrapper import OnePeaceEncoder

logger = logging.getLogger(__name__)

NAME = "OFA-Sys/ONE-PEACE"
CITATION = r"""@article{wang2023one,
  title={ONE-PEACE: Exploring One General Representation Model Toward Unlimited Modalities},
  author={Wang, Peng and Wang, Shijie and Lin, Junyang and Bai, Shuai and Zhou, Xiaohuan and Zhou, Jingren and
          Wang, Xinggang and Zhou, Chang},
  journal={arXiv preprint arXiv:2305.11172},
  year={2023}
}"""
# The released retrieval model (head "val") counted on the meta device from the 4b preset with the
# 50264-symbol GPT-2 dictionary: every parameter, and the token embedding table (50264 x 1536).
RELEASED_PARAMETERS = 3_884_740_545
RELEASED_TOKEN_EMBEDDING = 77_205_504
FLOAT32_BYTES = 4

ONE_PEACE = ModelMeta(
    loader=OnePeaceEncoder,
    name=NAME,
    revision=None,  # one-peace.pt has no Hub revision; load_encoder names the weights by their SHA-256
    release_date="2023-05-18",  # paper and code release (arXiv 2305.11172)
    languages=["eng-Latn"],
    n_parameters=RELEASED_PARAMETERS,
    n_embedding_parameters=RELEASED_TOKEN_EMBEDDING,
    memory_usage_mb=round(RELEASED_PARAMETERS * FLOAT32_BYTES / 2 ** 20),
    max_tokens=70,  # the official max_src_length (hub/loading.py TASK_DEFAULTS): longer texts are cut there
    embed_dim=1536,
    license="apache-2.0",
    open_weights=True,
    public_training_code="https://github.com/OFA-Sys/ONE-PEACE",
    public_training_data=None,
    framework=["PyTorch"],
    reference="https://github.com/OFA-Sys/ONE-PEACE",
    similarity_fn_name=ScoringFunction.COSINE,
    use_instructions=False,
    training_datasets=None,  # not listed by task in the paper: unknown overlap with MTEB's tasks
    modalities=["text", "image", "audio", "video"],
    model_type=["dense"],
    citation=CITATION,
)


def load_encoder(checkpoint: str, name: str = NAME, revision: Optional[str] = None, **kwargs) -> OnePeaceEncoder:
    """An encoder of ``checkpoint`` (``OnePeaceEncoder`` keywords: device, dtype, bpe_dir, modalities,
    fusion_weights) carrying its ``ModelMeta``; ``revision`` defaults to :func:`content_revision`."""
    encoder = OnePeaceEncoder(name, revision, checkpoint=checkpoint, **kwargs)
    encoder.mteb_model_meta = meta_for(encoder, name, revision or content_revision(checkpoint))
    return encoder


def meta_for(encoder: OnePeaceEncoder, name: str = NAME, revision: Optional[str] = None) -> ModelMeta:
    """``ONE_PEACE`` with the name, revision, size, width, text length and branches of ``encoder``'s model
    (another name than the release's also drops the release's date, licence and open-weights flag)."""
    model = encoder.hub.model
    n_parameters = sum(p.numel() for p in model.parameters())
    tokens = getattr(model.encoder_wrapper, "text_adapter", None)
    table = tokens.embed_tokens.weight.numel() if tokens is not None else 0
    update = {"name": name, "revision": revision, "n_parameters": n_parameters, "n_embedding_parameters": table,
              "memory_usage_mb": round(n_parameters * FLOAT32_BYTES / 2 ** 20), "embed_dim": encoder.embed_dim,
              "max_tokens": int(encoder.hub.max_src_length), "modalities": list(encoder.modalities)}
    if name != NAME:  # someone's own checkpoint: the release's date, licence and openness are not its own
        update.update(release_date=None, license=None, open_weights=None)
    return ONE_PEACE.model_copy(update=update)


def content_revision(path: str) -> str:
    """``sha256-`` and the first 12 hex digits of the SHA-256 of the checkpoint file (of every file, in
    name order, for a checkpoint directory)."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(root, n) for root, _, names in os.walk(path) for n in names)
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    size = sum(os.path.getsize(f) for f in files)
    if size > 2 ** 30:
        logger.info("hashing %s (%.1f GB) to name its revision; --revision skips this", path, size / 1e9)
    digest = hashlib.sha256()
    for name in files:
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return "sha256-" + digest.hexdigest()[:12]
