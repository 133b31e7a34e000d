"""bench/memory_plan.py, the source of docs/SCALING.md: what it measures must be what fairseq holds."""
import importlib.util

import pytest
import torch
from e2e_helpers import BPE_DIR, REPO


@pytest.fixture(scope="module")
def plan(user_dir):
    spec = importlib.util.spec_from_file_location("memory_plan", REPO / "bench" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def bpe(monkeypatch):
    monkeypatch.setenv("ONE_PEACE_BPE_DIR", str(BPE_DIR))


@pytest.mark.parametrize("precision, expected", [
    ("fp32", (8.0, 0.0, 8.0)),  # fp32 weights + grads, no master copy, two fp32 moments
    ("bf16", (4.0, 8.0, 8.0)),  # bf16 weights + grads, fp32 master copy + its grads
    ("memory-efficient bf16", (4.0, 0.0, 8.0)),  # no master copy: the SCALING.md recommendation
])
def test_bytes_per_parameter_after_a_real_trainer_update(plan, precision, expected):
    assert plan.training_state_bytes(precision) == pytest.approx(expected, abs=0.01)


def test_benchmark_models_are_counted_on_the_meta_device(plan):
    total, trainable = plan.count_parameters(plan.BENCHMARKS["esc50"])
    assert trainable == total and 1.4e9 < total < 1.7e9  # the audio branch + shared attention of the 4B preset


def test_saved_activations_grow_with_depth_and_checkpointing_keeps_layer_inputs(plan):
    task, model_cfg, y = plan.load_benchmark(plan.BENCHMARKS["esc50"], layers=1)
    model_cfg.encoder.embed_dim, model_cfg.encoder.ffn_embed_dim, model_cfg.encoder.attention_heads = 64, 128, 4
    measured = {}
    for layers in (1, 2):
        model_cfg.encoder.layers = layers
        model = task.build_model(model_cfg).train()
        measured[layers] = plan.saved_activation_bytes(model, plan.net_inputs(task, y, dtype=torch.float32))
    assert measured[2] > measured[1] > 0
    assert plan.layer_tokens(task, y) == 16000 * 5 // 320  # ESC-50: 5 s clips at 50 frames/s
