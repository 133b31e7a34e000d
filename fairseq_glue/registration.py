"""fairseq registration of the three ONE-PEACE models and their size architectures.

The fairseq classes add only what fairseq needs (``build_model`` from a task and a
config, ``load_state_dict`` with the official upgrades); the networks themselves are
the plain-torch models of ``one_peace.models.one_peace``.
"""
import dataclasses
import logging

from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from omegaconf import open_dict

from ..models import checkpoint as ckpt
from ..models.architectures import PRESETS, apply_preset
from ..models.build import configure_branches, configure_pretrain, pretrain_load_options
from ..models.config import OnePeaceClassifyConfig, OnePeacePretrainConfig, OnePeaceRetrievalConfig
from ..models.deferred_init import build_for_loading
from ..models.modalities import encoder_type_modalities, modalities_of
from ..models.one_peace import OnePeaceClassifyModel, OnePeacePretrainModel, OnePeaceRetrievalModel
from ..optim.layer_decay import info_of, tag_parameters

logger = logging.getLogger(__name__)

ckpt.register_safe_globals()

_TWINS = {}


def fairseq_config(cls):
    """The ``FairseqDataclass`` twin of a plain config dataclass (nested configs twinned too).

    Same fields, defaults and metadata; fairseq needs its own base class for registration,
    argparse flags and config merging.
    """
    if cls not in _TWINS:
        fields = []
        for f in dataclasses.fields(cls):
            if f.name == "_name":
                continue  # FairseqDataclass declares it
            if dataclasses.is_dataclass(f.type):
                twin = fairseq_config(f.type)
                fields.append((f.name, twin, dataclasses.field(default_factory=twin, metadata=f.metadata)))
            elif f.default_factory is not dataclasses.MISSING:
                fields.append((f.name, f.type, dataclasses.field(default_factory=f.default_factory,
                                                                 metadata=f.metadata)))
            else:
                fields.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
        twin = dataclasses.make_dataclass(cls.__name__, fields, bases=(FairseqDataclass,))
        twin.__module__, twin.__doc__ = cls.__module__, cls.__doc__
        _TWINS[cls] = twin
    return _TWINS[cls]


def _task_value(task, name, default=None):
    cfg = getattr(task, "cfg", None)
    return getattr(cfg, name, default) if cfg is not None else default


def _required_num_classes(task, model_name):
    num_classes = _task_value(task, "num_classes")
    if not num_classes:
        raise ValueError(f"task {_task_value(task, '_name')!r} sets no num_classes for {model_name}")
    return num_classes


def _vocab_size(task):
    dictionary = getattr(task, "source_dictionary", None)
    return len(dictionary) if dictionary is not None else None


def _configure_from_task(cfg, task, modalities, model_name):
    """Official build-time adjustments (``models/build.py``), on fairseq's config node."""
    with open_dict(cfg):
        cfg._name = model_name  # saved checkpoints then carry the full config under the model name
        configure_branches(cfg, modalities, _task_value(task, "patch_image_size"))


class _FairseqGlue(BaseFairseqModel):
    @classmethod
    def add_args(cls, parser):
        # Nested configs get prefixed flags (--encoder-embed-dim ...) instead of colliding.
        dc = getattr(cls, "__dataclass", None)
        if dc is not None:
            gen_parser_from_dataclass(parser, dc(), delete_default=True, with_prefix="")

    def _upgrade_options(self):
        return {}

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        if not strict:
            return super(BaseFairseqModel, self).load_state_dict(state_dict, strict=False)
        return self._load_checked(state_dict, **self._upgrade_options())

    def _load_checked(self, state_dict, **options):
        tagged = any(info_of(p) is not None for p in self.parameters())
        result = ckpt.load_into(self, state_dict, source="checkpoint", **options)
        if tagged:  # a load that adopts the checkpoint's tensors replaces the parameters
            tag_parameters(self)
        return result

    def upgrade_state_dict_named(self, state_dict, name):
        return state_dict  # upgrades happen in load_state_dict, which sees the whole model


@register_model("one_peace_retrieval", dataclass=fairseq_config(OnePeaceRetrievalConfig))
class OnePeaceRetrieval(OnePeaceRetrievalModel, _FairseqGlue):
    @classmethod
    def build_model(cls, cfg, task):
        head_type = _task_value(task, "head_type", "val")
        modalities = modalities_of(head_type)
        _configure_from_task(cfg, task, modalities, "one_peace_retrieval")
        return build_for_loading(lambda: cls(cfg, head_type=head_type, vocab_size=_vocab_size(task),
                                             copy_rel_pos_table=cfg.copy_rel_pos_table), cfg)


@register_model("one_peace_classify", dataclass=fairseq_config(OnePeaceClassifyConfig))
class OnePeaceClassify(OnePeaceClassifyModel, _FairseqGlue):
    @classmethod
    def build_model(cls, cfg, task):
        head_type = _task_value(task, "head_type", "vl")
        num_classes = _required_num_classes(task, "one_peace_classify")
        _configure_from_task(cfg, task, encoder_type_modalities(head_type), "one_peace_classify")
        return build_for_loading(lambda: cls(cfg, head_type=head_type, num_classes=num_classes,
                                             vocab_size=_vocab_size(task),
                                             use_two_images=bool(_task_value(task, "use_two_images", False))),
                                 cfg)


@register_model("one_peace_pretrain", dataclass=fairseq_config(OnePeacePretrainConfig))
class OnePeacePretrain(OnePeacePretrainModel, _FairseqGlue):
    @classmethod
    def build_model(cls, cfg, task):
        with open_dict(cfg):
            cfg._name = "one_peace_pretrain"
            configure_pretrain(cfg, _task_value(task, "patch_image_size"))
        model = build_for_loading(lambda: cls(cfg, vocab_size=_vocab_size(task)), cfg)
        model.stage2_pretrain = bool(cfg.stage2_pretrain)
        model.reset_logit_scale = bool(cfg.reset_logit_scale)
        if model.stage2_pretrain:
            # Stage 2 trains the modalities stage 1 did not have (audio officially; video).
            new = [m for m in model.modalities if m not in ("text", "image")]
            if not new:
                raise ValueError("stage2_pretrain needs a modality beyond text and image (use_audio_moe, ...)")
            freeze_all_but(model, *new)
        return model

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        return self._load_checked(state_dict, **pretrain_load_options(self.stage2_pretrain,
                                                                      self.reset_logit_scale, state_dict))


def freeze_all_but(model, *modalities: str):
    """Train new modalities on the frozen encoder (official stage 2 with ``audio``; ``video``).

    Frozen: the shared attention, every other modality's adapter/FFN/final LayerNorm and the
    text projection.  Trained: the modalities' adapters, FFNs and final LayerNorms, plus what lies
    outside the encoder (decoder, projections of the new modalities, mask heads, logit scale).
    """
    for p in model.text_proj.parameters():
        p.requires_grad = False
    wrapper = model.encoder_wrapper
    for p in wrapper.parameters():
        p.requires_grad = False
    trainable = []
    for modality in modalities:
        trainable += [wrapper.adapter(modality), getattr(wrapper.fusion_model, f"{modality}_layer_norm")]
        trainable += [getattr(layer, f"{modality}_ffn") for layer in wrapper.fusion_model.layers]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True


def _register_architectures():
    for model_name, plain in (("one_peace_retrieval", OnePeaceRetrievalConfig),
                              ("one_peace_classify", OnePeaceClassifyConfig),
                              ("one_peace_pretrain", OnePeacePretrainConfig)):
        dc = fairseq_config(plain)
        for size, preset in PRESETS.items():
            def arch(cfg, preset=preset, dc=dc):
                # fairseq also calls this on the flat argparse namespace: presets apply to the
                # nested model config only, at build time.
                if hasattr(cfg, "encoder"):
                    apply_preset(cfg, preset, dc())

            register_model_architecture(model_name, f"{model_name}_{size}")(arch)


_register_architectures()
