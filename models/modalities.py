"""The modality registry: one :class:`Modality` entry per modality, and the tables derived from it.

Everything that used to spell out ``("text", "image", "audio")`` loops over this registry
instead: the adapters a wrapper builds, the per-modality FFNs and final LayerNorms of the
fusion encoder, the projections and mask heads of the models, the student (masked) path,
the checkpoint key rules, the hub's preprocessing and the head types a task may name.
(The same idea as fairseq ``examples/data2vec``'s ``Modality`` + modality-encoder dict, or
ImageBind's ``ModalityType`` dicts.)

A modality entry names:

* ``adapter_cls``: a :class:`~one_peace.models.adapters.base.ModalityAdapter` subclass.  Every
  adapter has one constructor and one call signature (see ``ModalityAdapter``).
* ``config_cls``: its adapter config dataclass, read from ``EncoderConfig.<name>_adapter``
  (defaults when the field is absent); the branch is enabled by ``EncoderConfig.use_<name>_moe``.
  ``models/config.py`` makes both fields for every modality registered when it is imported (on by
  default for the ``official`` ones).
* ``input_keys``: its ``net_input`` keys; the first is required, the others optional.
  ``<name>_preserve_ids`` selects the kept positions of the masked student view.
* ``fused_type``: the encoder/head type of the joint pass ``[text ; <name>]`` (``vl``, ``al``).
* ``processor``: hub preprocessing, ``processor(hub, items) -> net_input dict``.
* ``official``: part of the released model (the head type ``val`` means every official one).
* ``upgrade``: checkpoint hook, ``upgrade(model, state_dict) -> keys that may start fresh``; it may
  add the modality's missing tensors to ``state_dict`` (video derives its branch from the image one).
* ``presets``: ``{size: {"encoder": {field: value}, "decoder": {...}}}``, this adapter's part of the size
  presets ``tiny`` / ``base`` / ``4b`` (``models/architectures.py`` merges them into ``<m>_adapter``).
* ``extensions``: the file suffixes ``one-peace-index`` files under this modality (lower case, with
  the dot); ``search_view``: how the search page shows a hit (one of :data:`SEARCH_VIEWS`).

The built-in entries are registered by ``models/builtin_modalities.py`` (imported by the package).

Head types are the modality names, the fused types, ``val``, or any ``+``-joined set of
registered modalities (``text+image``), which is how a new modality is embedded with others.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

# How the search page shows a hit: a thumbnail, a player with a poster, a player, a text snippet, a link.
SEARCH_VIEWS = ("image", "video", "audio", "text", "file")


@dataclass(frozen=True)
class Modality:
    name: str
    adapter_cls: type
    config_cls: type
    input_keys: Tuple[str, ...]
    fused_type: Optional[str] = None
    processor: Optional[Callable[[Any, Sequence], Dict[str, Any]]] = None
    official: bool = False
    upgrade: Optional[Callable[[Any, Dict[str, Any]], Iterable[str]]] = None
    extensions: Tuple[str, ...] = ()
    search_view: str = "file"
    presets: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    def __post_init__(self):
        if self.search_view not in SEARCH_VIEWS:
            raise ValueError(f"search_view of {self.name!r} must be one of {SEARCH_VIEWS}, got {self.search_view!r}")
        if any(not e.startswith(".") or e != e.lower() for e in self.extensions):
            raise ValueError(f"extensions of {self.name!r} must be lower-case suffixes with the dot, "
                             f"got {self.extensions!r}")

    @property
    def config_field(self) -> str:
        return f"{self.name}_adapter"

    @property
    def moe_flag(self) -> str:
        return f"use_{self.name}_moe"

    @property
    def preserve_key(self) -> str:
        return f"{self.name}_preserve_ids"

    def adapter_config(self, encoder_cfg):
        cfg = getattr(encoder_cfg, self.config_field, None)
        return self.config_cls() if cfg is None else cfg

    def enabled(self, encoder_cfg) -> bool:
        return bool(getattr(encoder_cfg, self.moe_flag, False))

    def build_adapter(self, encoder_cfg, num_tables: int = 1, vocab_size: Optional[int] = None,
                      pad_idx: int = 1):
        return self.adapter_cls(self.adapter_config(encoder_cfg), encoder_cfg.embed_dim,
                                encoder_cfg.attention_heads, num_tables=num_tables,
                                max_positions=encoder_cfg.max_positions, vocab_size=vocab_size, pad_idx=pad_idx)


_REGISTRY: Dict[str, Modality] = {}


def register_modality(modality: Modality, replace: bool = False) -> Modality:
    """Add a modality (``replace=True`` to redefine one; the name must be a Python identifier)."""
    if not modality.name.isidentifier() or "+" in modality.name:
        raise ValueError(f"modality name must be an identifier, got {modality.name!r}")
    if modality.name in _REGISTRY and not replace:
        raise ValueError(f"modality {modality.name!r} is already registered")
    clash = {m.fused_type for m in _REGISTRY.values() if m.name != modality.name} | set(_REGISTRY) | {"val"}
    if modality.fused_type is not None and modality.fused_type in clash:
        raise ValueError(f"fused type {modality.fused_type!r} of {modality.name!r} is already taken")
    _REGISTRY[modality.name] = modality
    return modality


def unregister_modality(name: str) -> None:
    if name in ("text", "image", "audio"):
        raise ValueError("the official modalities cannot be unregistered")
    _REGISTRY.pop(name, None)


def get_modality(name: str) -> Modality:
    if name not in _REGISTRY:
        raise ValueError(f"unknown modality {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def modality_names() -> Tuple[str, ...]:
    """Registered modalities in registration order (text, image, audio first)."""
    return tuple(_REGISTRY)


def all_modalities() -> Tuple[Modality, ...]:
    return tuple(_REGISTRY.values())


def encoder_types() -> Dict[str, Tuple[str, ...]]:
    """What one forward can encode: each modality alone, and each fused ``[text ; m]`` pair."""
    table = {name: (name,) for name in _REGISTRY}
    for m in _REGISTRY.values():
        if m.fused_type is not None:
            table[m.fused_type] = ("text", m.name)
    return table


def encoder_type_modalities(encoder_type: str) -> Tuple[str, ...]:
    table = encoder_types()
    if encoder_type not in table:
        raise ValueError(
            f"encoder_type must be one of {sorted(table)}, got {encoder_type!r}"
            + (" (no tri-modal fusion exists in ONE-PEACE)" if encoder_type == "val" else "")
        )
    return table[encoder_type]


def modalities_of(head_type: str) -> Tuple[str, ...]:
    """Which branches a head type needs (``val`` = every official modality, ``a+b`` = a set)."""
    if head_type == "val":
        return tuple(m.name for m in _REGISTRY.values() if m.official)
    table = encoder_types()
    if head_type in table:
        return table[head_type]
    names = tuple(head_type.split("+")) if isinstance(head_type, str) else ()
    if len(names) > 1 and all(n in _REGISTRY for n in names) and len(set(names)) == len(names):
        return tuple(n for n in _REGISTRY if n in names)  # canonical order
    raise ValueError(f"unknown head_type {head_type!r}; expected one of {sorted(table) + ['val']} "
                     f"or a '+'-joined set of registered modalities ({', '.join(_REGISTRY)})")


def head_type_for(modalities: Sequence[str]) -> str:
    """The head type naming exactly ``modalities`` (the inverse of :func:`modalities_of`)."""
    wanted = tuple(n for n in _REGISTRY if n in set(modalities))
    if not wanted:
        raise ValueError("no registered modality given")
    for head_type, names in encoder_types().items():
        if names == wanted:
            return head_type
    if wanted == modalities_of("val"):
        return "val"
    return "+".join(wanted)


def split_net_input(net_input: Dict[str, Any], modalities: Sequence[str]):
    """(``{modality: preserve_ids or None}``, whether any view is masked) from a net_input dict."""
    preserve = {m: net_input.get(get_modality(m).preserve_key) for m in modalities}
    return preserve, any(v is not None for v in preserve.values())
