"""The official trainer's ``common.layer_decay`` and ``common.no_bias_decay``, added to stock fairseq.

The official fine-tuning yamls set these two fields in ``common``; fairseq 0.12's ``CommonConfig``
has neither, so it rejects such a yaml.  We add them to that dataclass at run time (fairseq's own
files are not edited).  ``fairseq-train`` imports the user dir before it builds its argument parser,
so importing the plugin is enough there (``--layer-decay``, ``--no-bias-decay``);
``fairseq-hydra-train`` checks the yaml against the schema it stored before the user dir is
imported, so the Hydra plugin ``hydra_plugins/one_peace`` (found by Hydra's plugin scan, which runs
before the yaml is composed) adds them first; ``one-peace-hydra-train`` (``fairseq_glue/hydra_train.py``)
does the same where the plugin scan cannot see the package (editable installs).
"""
import dataclasses

COMMON_FIELDS = {
    "layer_decay": (float, 1.0, "layer-wise learning-rate decay of adjust_adam: layer k of L gets "
                                "lr * layer_decay ** (L + 1 - k) (1 = off)"),
    "no_bias_decay": (bool, False, "adjust_adam: no weight decay for biases, 1-D tensors and the "
                                   "model's no_weight_decay() parameters"),
}

# Methods dataclass() generates; removed before it runs again so that it regenerates them.
_GENERATED = ("__init__", "__repr__", "__eq__")


def extend_common_config() -> bool:
    """Adds the fields to fairseq's ``CommonConfig`` in place (every module holding the class sees
    them); True if they were missing."""
    from fairseq.dataclass import configs

    cls = configs.CommonConfig
    missing = [name for name in COMMON_FIELDS if name not in cls.__dataclass_fields__]
    if not missing:
        return False
    own = cls.__dict__["__annotations__"]
    for name, existing in cls.__dataclass_fields__.items():
        if name in own:
            setattr(cls, name, existing)  # re-processing keeps defaults, factories and help texts
    for name in missing:
        kind, default, help_text = COMMON_FIELDS[name]
        own[name] = kind
        setattr(cls, name, dataclasses.field(default=default, metadata={"help": help_text}))
    for method in _GENERATED:
        if method in cls.__dict__:
            delattr(cls, method)
    dataclasses.dataclass(cls)
    refresh_hydra_schemas()  # fairseq stored its schema when it was imported
    return True


def refresh_hydra_schemas() -> None:
    """Re-stores fairseq's schemas in Hydra's ConfigStore after :func:`extend_common_config`."""
    from fairseq.dataclass.configs import FairseqConfig
    from hydra.core.config_store import ConfigNode, ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for file_name, entry in list(store.repo.items()):
        if isinstance(entry, ConfigNode) and OmegaConf.get_type(entry.node) is FairseqConfig:
            store.store(name=file_name[: -len(".yaml")], node=FairseqConfig)
    if isinstance(store.repo.get("common.yaml"), ConfigNode):
        store.store(name="common", node=FairseqConfig.__dataclass_fields__["common"].default)
