"""The image patch embedding and the audio front end run as matrix multiplies (issue #28), in inference and
in training: the same outputs and the same parameter gradients as the official convolutions, in fp32 and within
bf16's rounding in bf16."""
import pytest
import torch

from one_peace.data_utils.feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC, parse_feature_encoder_spec
from one_peace.models.adapters.audio import ConvFeatureExtractor
from one_peace.models.adapters.image import build_patch_embedding
from one_peace.models.kernels import cpu_fused

# bf16 keeps 8 bits of mantissa: sums taken in another order differ by a few units of the last place
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4e-2}


def matmuls_and_convs(module, x):
    """(matmul path, conv path) outputs, each without autograd and with it; the gradients of both paths."""
    outputs, grads = [], []
    for forward in (module.forward, module.forward_convs):
        with torch.no_grad():
            outputs.append(forward(x))
        module.zero_grad()
        y = forward(x)
        assert y.requires_grad
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y.dtype)
        (y * weights).float().sum().backward()
        torch.testing.assert_close(y.detach(), outputs[-1], rtol=0, atol=0)  # autograd changes nothing
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    return outputs, grads


def assert_close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = want.float().abs().max().item()
    assert (got.float() - want.float()).abs().max().item() <= TOLERANCE[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", [64, 96])
def test_patch_embedding_is_the_convolutions(dtype, side):
    torch.manual_seed(0)
    embed = build_patch_embedding("hmlp", 64).to(dtype)
    for module in embed.modules():  # LayerNorms away from identity: a wrong order of channels shows
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    images = torch.randn(3, 3, side, side).to(dtype)
    (matmuls, convs), grads = matmuls_and_convs(embed, images)
    assert matmuls.shape == (3, 64, side // 16, side // 16)
    assert_close(matmuls, convs, dtype)
    # what the image adapter makes of it: tokens row-major
    assert_close(matmuls.flatten(2).transpose(1, 2), convs.flatten(2).transpose(1, 2), dtype)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 10  # 3 convs, 2 LayerNorms: weights, biases
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("samples", [16000, 16000 + 123])
def test_audio_front_end_is_the_convolutions(dtype, samples):
    torch.manual_seed(0)
    spec = parse_feature_encoder_spec(OFFICIAL_FEATURE_ENCODER_SPEC)
    spec = [(32, kernel, stride) for _, kernel, stride in spec]  # the official kernels and strides, narrower
    extractor = ConvFeatureExtractor(spec, conv_bias=True)
    exact = ConvFeatureExtractor(spec, conv_bias=True).double()
    exact.load_state_dict(extractor.state_dict())
    extractor = extractor.to(dtype)
    waves = torch.randn(2, samples).to(dtype)
    (matmuls, convs), grads = matmuls_and_convs(extractor, waves)
    assert matmuls.shape == convs.shape == (2, 32, convs.size(-1))
    assert_close(matmuls, convs, dtype)
    assert len(grads[0]) == 4 * len(spec)  # conv weight and bias, LayerNorm weight and bias
    kernel = cpu_fused.applies((torch.ones(1, 32, dtype=dtype),), extractor.conv_layers[0][2][1])
    if dtype == torch.float32 or not kernel:
        for name in grads[0]:
            assert_close(grads[0][name], grads[1][name], dtype)
        return
    # bf16: on a CPU each LayerNorm + GELU is a kernel that sums the LayerNorm's weight and bias gradients over
    # the ~3200 frames in float (kernels/cpu_fused.py), torch's bf16 backward in bf16 (up to 9% off here).  So
    # the matmul path is held to float64 convs of the same weights: within bf16's rounding, and for the
    # LayerNorms' parameters (``conv_layers.i.2.1``) no farther off than the bf16 convs.
    _, exact_grads = matmuls_and_convs(exact, waves.double())
    for name in grads[0]:
        want = exact_grads[1][name]
        assert_close(grads[0][name], want.to(dtype), dtype)
        if ".2.1." in name:
            assert (grads[0][name].double() - want).abs().max() <= \
                1.1 * (grads[1][name].double() - want).abs().max() + 1e-3 * want.abs().max().item(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel, stride, length", [(3, 2, 101), (3, 2, 100), (10, 5, 403), (2, 2, 64), (2, 2, 65),
                                                    (2, 3, 40)])
def test_conv_windows_equal_unfold_with_their_gradients(dtype, kernel, stride, length):
    """The front end's windows (a strided backward instead of unfold's) give unfold's values and, at the specs'
    overlaps of at most two windows, exactly its input gradient."""
    from one_peace.models.adapters.audio import conv_windows

    x = torch.randn(3, length, 5).to(dtype).requires_grad_()
    want = x.unfold(1, kernel, stride).transpose(-1, -2)
    want = want.reshape(*want.shape[:2], -1)
    got = conv_windows(x, kernel, stride)
    assert got.is_contiguous() and torch.equal(got, want)
    grad = torch.randn(want.shape).to(dtype)
    assert torch.equal(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0])
    with torch.no_grad():
        assert torch.equal(conv_windows(x, kernel, stride), want)
