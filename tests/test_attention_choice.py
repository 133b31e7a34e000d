"""``auto`` attention on a CPU in bf16 training: the explicit path (bf16 matmuls, float32 softmax) where it
trains faster than SDPA, SDPA elsewhere; the choice never changes what is computed beyond rounding."""
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
    # float32 measured no faster on the explicit path: unchanged
    assert select_attention_impl(_q(torch.float32, 65), bias=bias.float()) == "sdpa"


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
