"""The audio adapter's ``feature_encoder_spec``: a safe parser and the frame count it gives.

The one place that reads the spec string: the audio adapter (its conv stack), the datasets
and the hub (frame counts of a clip) all call these functions.  Pure Python: no torch.
"""
import ast
from typing import List, Optional, Sequence, Tuple

OFFICIAL_FEATURE_ENCODER_SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


def _eval_spec_node(node, source: str):
    """Evaluate the small expression language of feature_encoder_spec without ``eval``."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval_spec_node(e, source) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _eval_spec_node(node.left, source), _eval_spec_node(node.right, source)
        if isinstance(node.op, ast.Add):
            if type(left) is not type(right):
                raise ValueError(f"feature_encoder_spec {source!r}: '+' needs two lists or two ints")
            return left + right
        if isinstance(left, int) and isinstance(right, int):
            return left * right
        seq, count = (left, right) if isinstance(right, int) else (right, left)
        if not isinstance(count, int) or isinstance(seq, int) or not 0 <= count <= 10000:
            raise ValueError(f"feature_encoder_spec {source!r}: '*' needs a list and a small int")
        return seq * count
    raise ValueError(f"feature_encoder_spec {source!r}: unsupported syntax "
                     f"{type(node).__name__} (only int lists/tuples with + and *)")


def parse_feature_encoder_spec(spec_str: str) -> List[Tuple[int, int, int]]:
    """Parse e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"`` safely.

    Returns a list of (channels, kernel, stride) tuples.
    """
    if not isinstance(spec_str, str):
        raise TypeError(f"feature_encoder_spec must be a str, got {type(spec_str).__name__}")
    try:
        tree = ast.parse(spec_str.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"feature_encoder_spec {spec_str!r} is not valid: {exc.msg}") from None
    value = _eval_spec_node(tree.body, spec_str)
    if not isinstance(value, list) or not value:
        raise ValueError(f"feature_encoder_spec {spec_str!r} must be a non-empty list of (dim, kernel, stride)")
    layers = []
    for layer in value:
        if not (isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(v, int) and v > 0 for v in layer)):
            raise ValueError(f"feature_encoder_spec {spec_str!r}: layer {layer!r} is not a "
                             "(dim, kernel, stride) tuple of positive ints")
        layers.append(layer)
    return layers


def _as_layers(spec) -> Sequence[Tuple[int, int, int]]:
    return parse_feature_encoder_spec(spec) if isinstance(spec, str) else spec


def conv_output_frames(num_samples: int, spec, name: Optional[str] = None) -> int:
    """Frames the conv stack emits for ``num_samples``: n -> floor((n - k) / s) + 1 per layer.

    Raises ValueError (naming ``name`` if given) when the clip is shorter than the stack's
    receptive field, i.e. no frame would come out.
    """
    n = int(num_samples)
    for _, kernel, stride in _as_layers(spec):
        n = (n - kernel) // stride + 1
        if n <= 0:
            what = f"{name}: " if name else ""
            raise ValueError(f"{what}audio of {num_samples} samples is shorter than the feature "
                             "extractor's receptive field (0 frames)")
    return n


def receptive_field(spec) -> int:
    """Fewest samples that give one frame."""
    return samples_for_frames(1, spec)


def samples_for_frames(frames: int, spec) -> int:
    """Fewest samples that give ``frames`` frames: the first ``frames`` frames of any longer clip depend on
    these samples only (every conv is unpadded)."""
    n = int(frames)
    for _, kernel, stride in reversed(list(_as_layers(spec))):
        n = (n - 1) * stride + kernel
    return n
