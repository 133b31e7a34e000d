"""The image patch embedding and the audio front end run as matrix multiplies without autograd (issue #28):
an embedding is the same whether or not gradients are on, in fp32 and within bf16's rounding in bf16."""
import pytest
import torch

from one_peace.data_utils.feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC, parse_feature_encoder_spec
from one_peace.models.adapters.audio import ConvFeatureExtractor
from one_peace.models.adapters.image import build_patch_embedding

# bf16 keeps 8 bits of mantissa: sums taken in another order differ by a few units of the last place
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4e-2}


def without_and_with_autograd(module, x):
    with torch.no_grad():
        inference = module(x)
    with torch.enable_grad():
        training = module(x)
    assert training.requires_grad and not inference.requires_grad
    return inference, training.detach()


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
    inference, training = without_and_with_autograd(embed, images)
    assert inference.shape == (3, 64, side // 16, side // 16)
    assert_close(inference, training, dtype)
    # what the image adapter makes of it: tokens row-major
    assert_close(inference.flatten(2).transpose(1, 2), training.flatten(2).transpose(1, 2), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("samples", [16000, 16000 + 123])
def test_audio_front_end_is_the_convolutions(dtype, samples):
    torch.manual_seed(0)
    spec = parse_feature_encoder_spec(OFFICIAL_FEATURE_ENCODER_SPEC)
    spec = [(32, kernel, stride) for _, kernel, stride in spec]  # the official kernels and strides, narrower
    extractor = ConvFeatureExtractor(spec, conv_bias=True).to(dtype)
    waves = torch.randn(2, samples).to(dtype)
    inference, training = without_and_with_autograd(extractor, waves)
    assert inference.shape == training.shape == (2, 32, training.size(-1))
    assert_close(inference, training, dtype)
