"""Small building blocks shared by adapters, the fusion encoder and the heads."""
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from .kernels import cpu_fused
except ImportError:  # kernels package unavailable: torch's ops
    cpu_fused = None


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    # The official init truncates at +-1 std (a=-std, b=std), not the usual +-2.
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-std, b=std)


def make_layer_norm(dim: int, eps: float = 1e-5, elementwise_affine: bool = True) -> nn.LayerNorm:
    """``torch.nn.LayerNorm`` (same parameters and state-dict keys) that runs the Triton
    LayerNorm kernel only when asked: ``ONE_PEACE_LAYER_NORM=fused`` or
    ``set_layer_norm_impl("fused")`` (see ``kernels/switches.py``); ``F.layer_norm`` otherwise.
    """
    try:
        from .kernels import FusedLayerNorm
    except ImportError:  # kernels package unavailable: plain LayerNorm
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)
    return FusedLayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)


class LayerNorm2D(nn.Module):
    """Channels-last LayerNorm for (B, C, H, W) feature maps (key prefix ``layer_norm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.layer_norm = make_layer_norm(dim)

    def forward(self, x):
        return self.layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransposeLast(nn.Module):
    def forward(self, x):
        return x.transpose(-2, -1)


class SamePad(nn.Module):
    """Drops the extra frame an even-width 'same' convolution produces."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, : -self.remove] if self.remove else x


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per sample (batch-first)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def active(self) -> bool:
        return self.p > 0.0 and self.training

    def sample_scale(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(batch,) per-sample factors: 0 for a dropped sample, 1 / keep for a kept one."""
        keep = 1.0 - self.p
        return like.new_empty(batch).bernoulli_(keep) / keep

    def forward(self, x):
        if not self.active():
            return x
        return x * self.sample_scale(x.shape[0], x).view((-1,) + (1,) * (x.dim() - 1))

    def extra_repr(self):
        return f"p={self.p}"


class GeGLU(nn.Module):
    """gelu(W0 x) * (W1 x); keys ``wi_0`` / ``wi_1`` (no biases)."""

    def __init__(self, embed_dim: int, ffn_dim: int):
        super().__init__()
        self.wi_0 = nn.Linear(embed_dim, ffn_dim, bias=False)
        self.wi_1 = nn.Linear(embed_dim, ffn_dim, bias=False)

    def forward(self, x):
        return self.combine(*self.halves(x))

    def halves(self, x):
        return self.wi_0(x), self.wi_1(x)

    @staticmethod
    def combine(a, b):
        return F.gelu(a) * b


class ModalityFFN(nn.Sequential):
    """Per-modality feed-forward: GeGLU -> dropout -> LN(F) (Magneto sub-LN) -> Linear.

    Indices 0/2/3 are the official state-dict indices (``text_ffn.0.wi_0`` ...).  On a CPU, the GeGLU and
    the LayerNorm run as one C kernel where it applies (``kernels/cpu_fused.py``; not while activation
    dropout is active): 1.2-2.5x faster for that chain, and one rounding instead of three in bf16.
    """

    def forward(self, x):
        geglu, dropout, norm, out = self
        a, b = geglu.halves(x)
        if isinstance(norm, nn.LayerNorm) and not (dropout.p and dropout.training) \
                and cpu_fused is not None and cpu_fused.applies((a, b), norm):
            return out(cpu_fused.geglu_norm(a, b, norm.weight, norm.bias, norm.eps))
        return out(norm(dropout(geglu.combine(a, b))))


def modality_ffn(embed_dim: int, ffn_dim: int, activation_dropout: float, scale_fc: bool) -> ModalityFFN:
    """A modality's FFN (see :class:`ModalityFFN`); ``scale_fc=False`` drops the sub-LayerNorm."""
    return ModalityFFN(
        GeGLU(embed_dim, ffn_dim),
        nn.Dropout(activation_dropout),
        make_layer_norm(ffn_dim) if scale_fc else nn.Identity(),
        nn.Linear(ffn_dim, embed_dim),
    )


def init_one_peace_params(module: nn.Module):
    """Official initialisation, applied with ``model.apply``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d) and module.bias is not None:
        nn.init.zeros_(module.bias)
