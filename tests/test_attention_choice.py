"""``auto`` attention on a CPU in training: the explicit path where it trains faster than SDPA (bf16; float32
with a trained bias), SDPA elsewhere; the choice never changes what is computed beyond rounding."""
import torch

from one_peace.models.attention import MultiheadSelfAttention, select_attention_impl


def _q(dtype, length, grad=True):
    return torch.zeros(2, 4, length, 8, dtype=dtype, requires_grad=grad)


def test_bf16_training_with_a_trained_bias_takes_the_explicit_path():
    bias = torch.zeros(1, 4, 600, 600, dtype=torch.bfloat16, requires_grad=True)
    assert select_attention_impl(_q(torch.bfloat16, 600), bias=bias) == "reference"
    assert select_attention_impl(_q(torch.bfloat16, 600), bias=bias.detach()) == "sdpa"  # long, no bias grad
    assert select_attention_impl(_q(torch.bfloat16, 65)) == "reference"  # short sequences train faster
    with torch.no_grad():  # inference: SDPA
        assert select_attention_impl(_q(torch.bfloat16, 65, grad=False), bias=bias) == "sdpa"
    # float32: a trained bias takes the explicit path (SDPA's math fallback adds masking passes); without
    # one, or in inference, SDPA
    assert select_attention_impl(_q(torch.float32, 600), bias=bias.float()) == "reference"
    assert select_attention_impl(_q(torch.float32, 65), bias=bias.float().detach()) == "sdpa"
    assert select_attention_impl(_q(torch.float32, 65)) == "sdpa"
    with torch.no_grad():
        assert select_attention_impl(_q(torch.float32, 65, grad=False), bias=bias.float()) == "sdpa"
    assert select_attention_impl(_q(torch.float64, 65), bias=bias.double()) == "reference"


def test_module_follows_the_choice_and_matches_sdpa():
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(32, 4).to(torch.bfloat16)
    x = torch.randn(2, 9, 32, dtype=torch.bfloat16, requires_grad=True)
    table = torch.randn(1, 4, 9, 9, dtype=torch.bfloat16, requires_grad=True)
    out = attn(x, table)
    assert attn._attn_cache[-1].__name__ == "_reference_impl"
    out.float().square().sum().backward()
    grads = (x.grad.clone(), table.grad.clone())
    with torch.no_grad():
        inference = attn(x, table)
    assert attn._attn_cache[-1].__name__ == "_sdpa_impl"
    torch.testing.assert_close(out.detach().float(), inference.float(), rtol=0.02, atol=0.02)
    # the same gradients as the float32 computation, within bf16 rounding
    attn32 = MultiheadSelfAttention(32, 4)
    attn32.load_state_dict({k: v.float() for k, v in attn.state_dict().items()})
    x32, table32 = x.detach().float().requires_grad_(), table.detach().float().requires_grad_()
    attn32(x32, table32).square().sum().backward()
    torch.testing.assert_close(grads[0].float(), x32.grad, rtol=0.05, atol=0.05)
    torch.testing.assert_close(grads[1].float(), table32.grad, rtol=0.05, atol=0.05)


def test_bf16_explicit_path_equals_the_float32_softmax_rounded_once():
    # The explicit path leaves bf16 scores in bf16 (torch's kernel computes the softmax in float32): the
    # output is the official float32 softmax rounded to bf16, up to an ulp in a few elements.
    from one_peace.models.attention import reference_attention

    torch.manual_seed(0)
    q, k = (torch.randn(2, 4, 33, 8, dtype=torch.bfloat16) * 2 for _ in range(2))
    v = torch.eye(33, dtype=torch.bfloat16).expand(2, 4, 33, 33)  # attention @ I: the probabilities
    bias = torch.randn(1, 4, 33, 33, dtype=torch.bfloat16)
    probs = reference_attention(q, k, v, bias)
    official = torch.softmax((q @ k.transpose(-2, -1) + bias).float(), dim=-1).to(torch.bfloat16)
    assert (probs == official).float().mean() > 0.999
    torch.testing.assert_close(probs.float(), official.float(), rtol=0, atol=2 ** -8)


def test_bf16_training_on_small_heads_multiplies_in_float32():
    """Small heads (tokens x head dim up to SMALL_HEADS_FLOAT32_MAX) in bf16 on a CPU: the explicit path's matmuls
    run in float32 on the bf16 values and the output is rounded once; larger heads stay in bf16.  Gradients reach
    the bf16 inputs in bf16 either way."""
    from one_peace.models.attention import SMALL_HEADS_FLOAT32_MAX, _reference_impl, reference_attention

    torch.manual_seed(0)
    for length, head_dim in ((24, 16), (80, 64)):
        q, k, v = (torch.randn(2, 4, length, head_dim, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        bias = torch.randn(1, 4, length, length, dtype=torch.bfloat16)
        out = _reference_impl(q, k, v, bias, None, 0.0)
        assert out.dtype == torch.bfloat16
        in_float32 = reference_attention(q.float(), k.float(), v.float(), bias.float()).to(torch.bfloat16)
        in_bf16 = reference_attention(q, k, v, bias)
        small = length * head_dim <= SMALL_HEADS_FLOAT32_MAX
        assert small == (length == 24)
        assert torch.equal(out, in_float32 if small else in_bf16)
        out.float().sum().backward()
        assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0
