"""Deferred initialisation (models/deferred_init.py): what is recorded, that a replay equals an eager
build, and that it is confined to the building thread and call (no patch, no module-level state)."""
import threading

import pytest
import torch
import torch.nn as nn
from helpers import load_fixture
from torch.overrides import TorchFunctionMode

from one_peace import from_pretrained
from one_peace.models.deferred_init import build_for_loading, memory_map_for, record_inits

INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
ORIGINALS = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}


class ParameterWrites(TorchFunctionMode):
    """Collects the parameters (or views of them) that calls which really run write in place.  A
    deferred build's recorder, entered later, sits above this mode: what it records never gets here."""

    WRITES = {"uniform_", "normal_", "trunc_normal_", "constant_", "fill_", "zero_", "erfinv_", "mul_", "add_",
              "clamp_", "copy_", "kaiming_uniform_", "__setitem__", "random_", "exponential_", "masked_fill_"}

    def __init__(self):
        super().__init__()
        self.targets = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.WRITES:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, nn.Parameter) or isinstance(getattr(target, "_base", None), nn.Parameter):
                self.targets.append(target)
        return func(*args, **kwargs)


def init_functions_unpatched() -> bool:
    return all(getattr(nn.init, name) is fn for name, fn in ORIGINALS.items())


class EveryInitialiser(nn.Module):
    """Every torch.nn.init function, on parameters and on views / .data / .detach() of them."""

    def __init__(self):
        super().__init__()
        assert init_functions_unpatched()
        self.w = nn.Parameter(torch.empty(8, 6))
        for name in ("uniform_", "normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                     "kaiming_normal_", "orthogonal_"):
            getattr(nn.init, name)(self.w)
        nn.init.trunc_normal_(self.w, std=0.02, a=-0.02, b=0.02)  # rejection sampling (reads its draws)
        nn.init.trunc_normal_(self.w[2:5], std=0.5, a=-0.1, b=2.0)
        nn.init.sparse_(self.w, 0.3)
        nn.init.constant_(self.w[:, 1], 0.5)
        nn.init.ones_(self.w.data[0])
        nn.init.zeros_(self.w.detach()[1])
        self.eye = nn.Parameter(torch.empty(4, 5))
        nn.init.eye_(self.eye)  # torch.eye(out=...)
        self.dirac = nn.Parameter(torch.empty(4, 2, 3))
        nn.init.dirac_(self.dirac)
        self.copied = nn.Parameter(torch.empty(6))
        with torch.no_grad():
            self.w[7] = 3.0
            self.w[6] += 1.0
            self.copied.copy_(self.w[3])  # replayed in order, from the replayed w
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4))  # buffers are computed as usual
        self.table.mul_(2)


def tiny(config_cls, size="tiny"):
    from one_peace.models.architectures import preset_config

    return preset_config(config_cls, size)


def torch_layers():
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Embedding(9, 4, padding_idx=2), nn.Conv1d(3, 4, 3),
                         nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MultiheadAttention(8, 2))


def retrieval():
    from one_peace.models import OnePeaceRetrievalModel
    from one_peace.models.config import OnePeaceRetrievalConfig

    return OnePeaceRetrievalModel(tiny(OnePeaceRetrievalConfig), head_type="val", vocab_size=256)


def pretrain():
    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.config import OnePeacePretrainConfig

    return OnePeacePretrainModel(tiny(OnePeacePretrainConfig), vocab_size=256)


def video_pretrain():
    from test_video import tiny_video_pretrain_cfg

    from one_peace.models import OnePeacePretrainModel

    return OnePeacePretrainModel(tiny_video_pretrain_cfg(), vocab_size=256)


def classify():
    from one_peace.models import OnePeaceClassifyModel
    from one_peace.models.config import OnePeaceClassifyConfig

    return OnePeaceClassifyModel(tiny(OnePeaceClassifyConfig), head_type="vl", num_classes=5, vocab_size=256)


def audio_visual():
    from one_peace.models.audio_visual import OnePeaceAudioVisualClassifyModel
    from one_peace.models.config import OnePeaceClassifyConfig

    return OnePeaceAudioVisualClassifyModel(tiny(OnePeaceClassifyConfig), num_classes=5)


def segmentation():
    from one_peace.models.architectures import PRESETS, SEGMENTATION_HEADS, apply_preset
    from one_peace.models.config import OnePeaceSegmentationConfig
    from one_peace.models.segmentation import OnePeaceSegmentationModel

    cfg = OnePeaceSegmentationConfig()
    apply_preset(cfg, dict(PRESETS["tiny"], **SEGMENTATION_HEADS["tiny"]), OnePeaceSegmentationConfig())
    cfg.encoder.image_adapter.rel_bucket_size = 2
    return OnePeaceSegmentationModel(cfg, 5)


@pytest.mark.parametrize("build", [EveryInitialiser, torch_layers, retrieval, pretrain, video_pretrain, classify,
                                   audio_visual, segmentation], ids=lambda f: f.__name__)
def test_a_replayed_build_equals_the_eager_build_bit_for_bit(build):
    torch.manual_seed(0)
    eager = build()
    torch.manual_seed(0)
    with ParameterWrites() as writes:
        with record_inits() as record:
            assert init_functions_unpatched()
            model = build()
    assert writes.targets == [], "an initialiser ran while building"
    assert init_functions_unpatched()
    record.bind(model)
    assert record.calls and all(isinstance(call.target.owner, str) for call in record.calls)  # by name
    record.replay(model)  # nothing drew random numbers in between: the same draws as the eager build
    want, got = eager.state_dict(), model.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_a_converted_model_replays_onto_its_converted_parameters():
    """fairseq's trainer casts the model (fp16/bf16) before loading: records name what they write."""
    with record_inits() as record:
        model = torch_layers()
    record.bind(model)
    model = model.to(torch.bfloat16)
    record.replay(model)
    linear, norm, embedding = model[0], model[1], model[2]
    assert linear.weight.dtype == torch.bfloat16 and 0 < linear.weight.float().abs().max() <= 5 ** -0.5
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(embedding.weight[2], torch.zeros(4, dtype=torch.bfloat16))
    assert embedding.weight.float().std() > 0.5


def check_eager_layers(out):
    """Runs in a second thread while the main thread is inside a deferred build."""
    assert init_functions_unpatched()
    layers = nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32), nn.Embedding(10, 8, padding_idx=0))
    extra = nn.Parameter(torch.empty(64, 16))
    nn.init.trunc_normal_(extra, std=0.02, a=-0.02, b=0.02)
    linear, norm, embedding = layers
    assert 0 < linear.weight.std() and linear.weight.abs().max() <= 32 ** -0.5
    assert 0 < linear.bias.std() and linear.bias.abs().max() <= 32 ** -0.5
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))
    assert torch.equal(embedding.weight[0], torch.zeros(8)) and 0.5 < embedding.weight[1:].std() < 1.5
    assert 0.005 < extra.std() < 0.02 and extra.abs().max() <= 0.02
    out["parameters"] = [*layers.parameters(), extra]


def test_a_deferred_build_leaves_other_threads_alone():
    """Thread B builds eagerly while the main thread is inside a deferred build of A: B's layers are
    initialised, and A's record holds all of A's calls and none of B's."""
    torch.manual_seed(0)
    with record_inits() as alone:
        retrieval()
    a_building, b_done = threading.Event(), threading.Event()
    out, errors = {}, []

    def thread_b():
        try:
            assert a_building.wait(60)
            check_eager_layers(out)
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)
        finally:
            b_done.set()

    def build_a():
        model = retrieval()
        a_building.set()
        assert b_done.wait(60)  # A is still inside the recorder while B builds
        return model

    b = threading.Thread(target=thread_b)
    b.start()
    with record_inits() as record:
        model = build_a()
    b.join()
    if errors:
        raise errors[0]
    b_ids = {id(p) for p in out["parameters"]}
    assert not any(id(call.target.owner) in b_ids for call in record.calls)
    assert len(record.calls) == len(alone.calls)
    torch.manual_seed(0)
    eager = retrieval()
    torch.manual_seed(0)
    record.bind(model)
    record.replay(model)
    for key, value in eager.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.fixture(scope="module")
def retrieval_checkpoint(tmp_path_factory):
    from test_evaluate import write_retrieval_checkpoint

    return str(write_retrieval_checkpoint(tmp_path_factory.mktemp("deferred") / "retrieval.pt"))


def embeddings(hub, inputs):
    with torch.no_grad():
        return (hub.extract_text_features(inputs["src_tokens"]),
                hub.extract_image_features(inputs["src_images"]),
                hub.extract_audio_features(inputs["src_audios"], inputs["audio_padding_masks"]))


def test_two_deferred_loads_at_once_equal_one_sequential_load(retrieval_checkpoint, fixture_bpe_dir):
    inputs = load_fixture("inputs.pt")

    def load():
        hub = from_pretrained(retrieval_checkpoint, device="cpu", dtype="float32", bpe_dir=fixture_bpe_dir)
        return hub.model.state_dict(), embeddings(hub, inputs)

    want_state, want_out = load()
    start = threading.Barrier(3)
    results, errors = {}, []

    def run(name, work):
        try:
            start.wait(60)
            results[name] = work()
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, load)) for i in range(2)]
    threads.append(threading.Thread(target=run, args=("eager", lambda: check_eager_layers({}))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for state, out in (results[0], results[1]):
        assert state.keys() == want_state.keys()
        for key, value in want_state.items():
            assert torch.equal(state[key], value), key
        for got, want in zip(out, want_out):
            assert torch.equal(got, want)


def test_a_training_load_is_memory_mapped_only_in_the_call_whose_model_awaits_the_file(tmp_path):
    """fairseq-train: the model carries the file it awaits; only fairseq's ``Trainer.load_checkpoint``
    of a trainer holding that model reads it memory-mapped -- not another thread, file or model, nor
    once the model is filled."""
    from fairseq import trainer as fairseq_trainer
    from omegaconf import OmegaConf

    from one_peace.fairseq_glue import compat

    assert getattr(fairseq_trainer.Trainer.load_checkpoint, "one_peace_patched", False)
    ckpt = tmp_path / "pretrained.pt"
    ckpt.write_bytes(b"x")
    root = OmegaConf.create({"checkpoint": {"save_dir": str(tmp_path / "run"), "restore_file": "checkpoint_last.pt",
                                            "finetune_from_model": str(ckpt)}, "model": {"_name": "x"}})
    model = build_for_loading(lambda: nn.Linear(4, 4), root.model)
    assert not memory_map_for(str(ckpt))  # nothing global: building alone maps nothing

    class Trainer:  # what the wrapper needs of fairseq's Trainer
        def __init__(self, model):
            self._model = model

        def load_checkpoint(self, filename):
            seen = {"file": memory_map_for(filename), "other file": memory_map_for(str(tmp_path / "other.pt"))}
            other = threading.Thread(target=lambda: seen.update(thread=memory_map_for(filename)))
            other.start()
            other.join()
            return seen

    load_checkpoint = compat._awaited_loading(Trainer.load_checkpoint)
    assert load_checkpoint(Trainer(model), str(ckpt)) == {"file": True, "other file": False, "thread": False}
    assert not memory_map_for(str(ckpt))
    assert load_checkpoint(Trainer(nn.Linear(4, 4)), str(ckpt))["file"] is False
    model(torch.zeros(1, 4))  # never loaded: initialised at its first forward, awaits nothing any more
    assert load_checkpoint(Trainer(model), str(ckpt))["file"] is False
