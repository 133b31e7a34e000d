"""The fused CPU kernels (models/kernels/cpu_fused.c): GeGLU + sub-LayerNorm against torch, the FFN's choice
of path, and what happens when the library cannot be built."""
import logging

import pytest
import torch
import torch.nn.functional as F

from one_peace.models.components import modality_ffn
from one_peace.models.kernels import cpu_build, cpu_fused, switches


@pytest.fixture
def switch():
    yield switches.set_cpu_fused_impl
    switches.set_cpu_fused_impl(None)


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """A process state with no library loaded and an empty cache folder; restored afterwards."""
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(tmp_path / "cache"))
    cpu_build.forget()
    yield tmp_path / "cache"
    cpu_build.forget()


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = shape[-1]
    a = torch.randn(shape, generator=gen) * 2
    b = torch.randn(shape, generator=gen)
    weight = 1 + torch.randn(width, generator=gen) / 4
    bias = torch.randn(width, generator=gen) / 4
    dy = torch.randn(shape, generator=gen)
    return [t.to(dtype) for t in (a, b, weight, bias, dy)]


def _run(fn, a, b, weight, bias, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (a, b, weight, bias)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


def _stock(a, b, weight, bias):
    return F.layer_norm(F.gelu(a) * b, (a.shape[-1],), weight, bias, 1e-5)


def _fused(a, b, weight, bias):
    return cpu_fused.geglu_norm(a, b, weight, bias, 1e-5)


def _stock_norm_gelu(x, weight, bias):
    return F.gelu(F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5))


def _fused_norm_gelu(x, weight, bias):
    return cpu_fused.norm_gelu(x, weight, bias, 1e-5)


def _run_norm_gelu(fn, x, _, weight, bias, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("shape", [(2, 5, 37), (7, 128), (3, 2048)])
def test_float32_matches_the_float64_chain(shape):
    # Widths that are not a multiple of any vector width, and the base preset's FFN width.
    inputs = _inputs(shape, torch.float32)
    reference = _run(_stock, *[t.double() for t in inputs])
    for name, got, ref in zip(("y", "da", "db", "dweight", "dbias"), _run(_fused, *inputs), reference):
        assert got.dtype == torch.float32 and got.shape == ref.shape, name
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=2e-5, msg=name)


@pytest.mark.parametrize("shape", [(2, 5, 37), (300, 32), (3, 512)])
def test_norm_gelu_in_float32_matches_the_float64_chain(shape):
    # The tiny front end's 32 channels and the official 512.
    inputs = _inputs(shape, torch.float32)
    reference = _run_norm_gelu(_stock_norm_gelu, *[t.double() for t in inputs])
    for name, got, ref in zip(("y", "dx", "dweight", "dbias"), _run_norm_gelu(_fused_norm_gelu, *inputs), reference):
        assert got.dtype == torch.float32 and got.shape == ref.shape, name
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=2e-5, msg=name)


def test_bfloat16_is_at_least_as_close_to_float64_as_torchs_chain():
    inputs = _inputs((64, 512), torch.bfloat16)
    for run, stock_fn, fused_fn, names in ((_run, _stock, _fused, ("y", "da", "db", "dweight", "dbias")),
                                           (_run_norm_gelu, _stock_norm_gelu, _fused_norm_gelu,
                                            ("y", "dx", "dweight", "dbias"))):
        reference = run(stock_fn, *[t.double() for t in inputs])
        fused, stock = run(fused_fn, *inputs), run(stock_fn, *inputs)
        for name, f, s, r in zip(names, fused, stock, reference):
            assert f.dtype == torch.bfloat16, name
            fused_err = (f.double() - r).abs().mean().item()
            stock_err = (s.double() - r).abs().mean().item()
            # One rounding (of the output) instead of several: never worse than torch by more than noise.
            assert fused_err <= 1.05 * stock_err, (fused_fn.__name__, name, fused_err, stock_err)
    # geglu_norm's weight gradient is summed over rows in float, torch's bf16 backward in bf16.
    reference, fused, stock = _run(_stock, *[t.double() for t in inputs]), _run(_fused, *inputs), _run(_stock, *inputs)
    assert (fused[3].double() - reference[3]).abs().max() < 0.2 * (stock[3].double() - reference[3]).abs().max()


def test_threads_give_the_same_rows():
    inputs = _inputs((33, 300), torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(_fused, *inputs)
        torch.set_num_threads(2)
        two = _run(_fused, *inputs)
    finally:
        torch.set_num_threads(threads)
    for name, x, y in zip(("y", "da", "db"), one, two):
        assert torch.equal(x, y), name
    torch.testing.assert_close(one[3], two[3])  # summed over rows in another grouping
    torch.testing.assert_close(one[4], two[4])


def _ffn(dropout=0.0, dtype=torch.float32):
    torch.manual_seed(0)
    ffn = modality_ffn(48, 96, dropout, scale_fc=True).to(dtype)
    with torch.no_grad():
        ffn[2].weight.uniform_(0.5, 1.5)
        ffn[2].bias.uniform_(-0.5, 0.5)
    return ffn


def _ffn_step(ffn, x):
    ffn.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = ffn(x)
    y.backward(torch.ones_like(y))
    return [y.detach(), x.grad] + [p.grad.clone() for p in ffn.parameters()]


def test_the_ffn_runs_the_kernel_and_agrees_with_torchs_ops(switch, monkeypatch):
    ffn, x = _ffn(), torch.randn(3, 10, 48)
    calls = []
    kernel = cpu_fused.geglu_norm
    monkeypatch.setattr(cpu_fused, "geglu_norm", lambda *a: calls.append(1) or kernel(*a))
    switch("torch")
    stock = _ffn_step(ffn, x)
    assert not calls
    switch(None)  # auto
    fused = _ffn_step(ffn, x)
    assert calls == [1]
    for s, f in zip(stock, fused):
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-5)


def test_active_dropout_and_float64_keep_torchs_ops(switch, monkeypatch):
    monkeypatch.setattr(cpu_fused, "geglu_norm", lambda *a: pytest.fail("kernel called"))
    ffn = _ffn(dropout=0.5).train()
    torch.manual_seed(1)
    y = ffn(torch.randn(4, 48))
    torch.manual_seed(1)
    ffn_ref = _ffn(dropout=0.5).train()
    switch("torch")
    torch.manual_seed(1)
    assert torch.equal(y, ffn_ref(torch.randn(4, 48)))
    switch(None)
    _ffn(dtype=torch.float64)(torch.randn(4, 48, dtype=torch.float64))  # auto: torch's ops, no error


def test_a_demanded_kernel_that_cannot_run_names_the_switch(switch):
    switch("fused")
    with pytest.raises(RuntimeError, match="ONE_PEACE_CPU_FUSED=fused.*float64"):
        _ffn(dtype=torch.float64)(torch.randn(4, 48, dtype=torch.float64))


def test_no_compiler_falls_back_with_one_warning(fresh_build, switch, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-cc"))
    ffn, x = _ffn(), torch.randn(5, 48)
    with caplog.at_level(logging.WARNING, logger=cpu_build.__name__):
        y = ffn(x)
        ffn(x)
    warnings = [r for r in caplog.records if "CPU fused kernels off" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-cc" in warnings[0].getMessage()
    switch("torch")
    assert torch.equal(y, ffn(x))
    switch("fused")
    with pytest.raises(RuntimeError, match="(?s)could not be built.*no-such-cc.* found"):
        ffn(x)


def test_a_wrong_library_is_refused(fresh_build, switch):
    def wrong(lib):
        raise AssertionError("cpu_fused.c self-check: y in torch.float32 is off")

    with pytest.raises(cpu_build.KernelBuildError, match="self-check"):
        cpu_build.load(wrong)
    switch("fused")
    with pytest.raises(RuntimeError, match="self-check"):
        _ffn()(torch.randn(2, 48))


def test_the_library_is_built_once_and_cached(fresh_build):
    path = cpu_build.build()
    assert path.startswith(str(fresh_build)) and path.endswith(".so")
    stamp = (fresh_build / path.rsplit("/", 1)[-1]).stat().st_mtime_ns
    assert cpu_build.build() == path
    assert (fresh_build / path.rsplit("/", 1)[-1]).stat().st_mtime_ns == stamp
    assert [p.name for p in fresh_build.iterdir()] == [path.rsplit("/", 1)[-1]]  # no temporary left behind


def test_the_audio_front_end_runs_the_kernel_and_agrees_with_torchs_ops(switch, monkeypatch):
    from one_peace.models.adapters.audio import ConvFeatureExtractor

    torch.manual_seed(0)
    front_end = ConvFeatureExtractor([(32, 10, 5), (32, 3, 2), (32, 2, 2)])
    for layer in front_end.conv_layers:
        torch.nn.init.uniform_(layer[2][1].weight, 0.5, 1.5)
        torch.nn.init.uniform_(layer[2][1].bias, -0.5, 0.5)
    wave = torch.randn(2, 1600)
    calls = []
    kernel = cpu_fused.norm_gelu
    monkeypatch.setattr(cpu_fused, "norm_gelu", lambda *a: calls.append(1) or kernel(*a))

    def step():
        front_end.zero_grad()
        w = wave.clone().requires_grad_()
        y = front_end(w)
        y.backward(torch.ones_like(y))
        return [y.detach(), w.grad] + [p.grad.clone() for p in front_end.parameters()]

    switch("torch")
    stock = step()
    assert not calls
    switch(None)
    fused = step()
    assert len(calls) == 3
    for s, f in zip(stock, fused):
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-5)


def test_an_unwritable_cache_and_a_bad_switch_value_are_named(fresh_build, switch, monkeypatch):
    blocker = fresh_build.parent / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(blocker / "cache"))
    switch("fused")
    with pytest.raises(RuntimeError, match=f"cannot write the kernel cache {blocker}/cache.*{cpu_build.CACHE_ENV}"):
        _ffn()(torch.randn(2, 48))
    switch(None)
    monkeypatch.setenv(switches.CPU_FUSED_ENV, "yes")
    switches.invalidate_kernel_caches()
    with pytest.raises(ValueError, match="ONE_PEACE_CPU_FUSED must be one of"):
        _ffn()(torch.randn(2, 48))
    monkeypatch.delenv(switches.CPU_FUSED_ENV)
    switches.invalidate_kernel_caches()
