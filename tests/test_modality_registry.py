"""A fourth modality registered from this file alone runs through every layer of the project.

``toy``: a float vector cut into chunks of 4 values, each chunk one token (Linear 4 -> D),
plus CLS, learned positions and 1-D relative-position buckets.  Nothing in the project
knows it: it is registered here, and the encoder, the fused pass with text, the student
path, checkpoint save/load and the hub must work with it.
"""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from one_peace.models import OnePeaceClassifyModel, OnePeacePretrainModel, OnePeaceRetrievalModel
from one_peace.models.adapters.base import (
    AdapterOutput,
    ModalityAdapter,
    gather_bucket,
    gather_tokens,
    preserve_positions,
    require_input,
)
from one_peace.models.architectures import preset_config
from one_peace.models.checkpoint import CheckpointMismatchError, load_checkpoint_file, load_into
from one_peace.models.config import OnePeaceClassifyConfig, OnePeacePretrainConfig, OnePeaceRetrievalConfig
from one_peace.models.modalities import (
    Modality,
    encoder_type_modalities,
    head_type_for,
    modalities_of,
    modality_names,
    register_modality,
    unregister_modality,
)
from one_peace.models.relative_position import make_token_bucket_position, token_bucket_count

CHUNK = 4


@dataclass
class ToyAdapterConfig:
    bucket_size: int = 8
    use_attn_bias: bool = True
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    has_embedding: bool = True  # the pretraining decoder's adapter has none


class ToyAdapter(ModalityAdapter):
    NO_WEIGHT_DECAY = ("cls_embedding", "positions")

    def __init__(self, cfg, embed_dim, attention_heads, num_tables=1, max_positions=64, **unused):
        super().__init__(cfg, embed_dim, attention_heads, token_bucket_count(cfg.bucket_size), num_tables)
        self.embed_chunks = nn.Linear(CHUNK, embed_dim) if cfg.has_embedding else None
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.positions = nn.Parameter(torch.randn(max_positions, embed_dim) * 0.02)
        if self.use_attn_bias:
            self.register_buffer("rp_bucket", make_token_bucket_position(cfg.bucket_size, max_positions))

    def forward(self, inputs, preserve_ids=None):
        vectors = require_input(inputs, "src_toys", "toy")
        bsz = vectors.size(0)
        x = self.embed_chunks(vectors.reshape(bsz, -1, CHUNK))
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), x], dim=1)
        length = x.size(1)
        x = x + self.positions[:length]
        full_padding_mask = padding_mask = torch.zeros(bsz, length, dtype=torch.bool)
        bucket = self.rp_bucket[:length, :length] if self.use_attn_bias else None
        if preserve_ids is not None:
            index, padding_mask = preserve_positions(preserve_ids)
            x = gather_tokens(x, index)
            bucket = gather_bucket(bucket, index) if bucket is not None else None
        return AdapterOutput(self.finish_embedding(x), padding_mask, bucket, self, full_padding_mask)

    def forward_decoder(self, embeds, preserve_ids, mask_token, full_padding_mask):
        length = full_padding_mask.size(1)
        x = self.scatter_decoder_input(embeds, preserve_ids, mask_token, length) + self.positions[:length]
        return AdapterOutput(self.finish_embedding(x), full_padding_mask, None, self)


def process_toys(hub, items):
    return {"src_toys": torch.tensor(items, dtype=hub.dtype, device=hub.device)}


@pytest.fixture
def toy():
    spec = register_modality(Modality("toy", ToyAdapter, ToyAdapterConfig, ("src_toys",), fused_type="tl",
                                      processor=process_toys))
    yield spec
    unregister_modality("toy")
    assert "toy" not in modality_names()


def tiny_config(config_cls, **encoder_fields):
    cfg = preset_config(config_cls, "tiny")
    cfg.encoder.toy_adapter = ToyAdapterConfig()
    for key, value in encoder_fields.items():
        setattr(cfg.encoder, key, value)
    return cfg


def toy_batch(bsz=3, chunks=5, seed=0):
    return torch.randn(bsz, chunks * CHUNK, generator=torch.Generator().manual_seed(seed))


def tokens(bsz=3):
    out = torch.randint(4, 200, (bsz, 6), generator=torch.Generator().manual_seed(1))
    out[0, 4:] = 1  # padding
    return out


def test_registry_tables(toy):
    assert modality_names()[-1] == "toy"
    assert encoder_type_modalities("tl") == ("text", "toy")
    assert modalities_of("text+toy") == ("text", "toy")
    assert modalities_of("val") == ("text", "image", "audio")  # the official three only
    assert head_type_for(["toy", "text"]) == "tl"
    assert head_type_for(["image", "toy"]) == "image+toy"
    with pytest.raises(ValueError, match="already registered"):
        register_modality(Modality("toy", ToyAdapter, ToyAdapterConfig, ("src_toys",)))
    with pytest.raises(ValueError, match="unknown head_type"):
        modalities_of("text+nothing")


def test_encoder_alone_and_fused_with_text(toy):
    torch.manual_seed(0)
    model = OnePeaceRetrievalModel(tiny_config(OnePeaceRetrievalConfig), head_type="text+toy", vocab_size=256).eval()
    assert model.encoder_wrapper.image_adapter is None and model.toy_proj is not None
    emb = model.encode("toy", src_toys=toy_batch())
    assert emb.shape == (3, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # the flag-driven official forward dispatches to the same path
    torch.testing.assert_close(model(src_toys=toy_batch(), encoder_type="toy"), emb)
    # per-modality FFN: the toy tokens went through toy_ffn, which now exists in every layer
    assert all(layer.toy_ffn is not None for layer in model.encoder_wrapper.fusion_model.layers)

    fused = model.encoder_wrapper(encoder_type="tl", src_tokens=tokens(), src_toys=toy_batch())
    assert fused["text"].features.shape == (3, 7, 64) and fused["toy"].features.shape == (3, 6, 64)
    # fusion changes the toy tokens (they attend to text) ...
    alone = model.encoder_wrapper(encoder_type="toy", src_toys=toy_batch())
    assert not torch.allclose(alone["toy"].features, fused["toy"].features)
    # ... and a classifier over the fused pass pools the text segment
    clf = OnePeaceClassifyModel(tiny_config(OnePeaceClassifyConfig), head_type="tl", num_classes=5, vocab_size=256)
    assert clf(src_tokens=tokens(), src_toys=toy_batch()).shape == (3, 5)
    layers = model.forward_intermediates("tl", indices=[0, -1], src_tokens=tokens(), src_toys=toy_batch())
    assert [t.shape for t in layers["toy"]] == [(3, 6, 64), (3, 6, 64)]


def test_student_path(toy):
    torch.manual_seed(0)
    cfg = tiny_config(OnePeacePretrainConfig, use_toy_moe=True, use_image_moe=False, use_audio_moe=False)
    cfg.decoder.toy_adapter = ToyAdapterConfig(use_attn_bias=False, has_embedding=False)
    cfg.decoder.use_toy_moe = True
    model = OnePeacePretrainModel(cfg, vocab_size=256)
    assert model.modalities == ("text", "toy") and model.toy_mask_head is not None
    assert "decoder_wrapper.toy_adapter.positions" in model.no_weight_decay()
    preserve = torch.tensor([[0, 1, 3], [0, 2, 5], [0, 4, -1]])  # CLS kept; -1 pads the batch
    out = model(src_toys=toy_batch(), toy_preserve_ids=preserve, encoder_type="toy")
    assert out.shape == (3, 6, 64)
    text_preserve = torch.tensor([[0, 2, 3, -1], [0, 1, 5, 6], [0, 3, 4, 6]])
    text_out, toy_out = model(src_tokens=tokens(), src_toys=toy_batch(), text_preserve_ids=text_preserve,
                              toy_preserve_ids=preserve, encoder_type="tl")
    assert text_out.shape == (3, 7, 64) and toy_out.shape == (3, 6, 64)
    (text_out.sum() + toy_out.sum()).backward()
    assert model.encoder_wrapper.toy_adapter.embed_chunks.weight.grad.abs().sum() > 0
    assert model.decoder_toy_embed.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip(toy, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(OnePeaceRetrievalConfig)
    model = OnePeaceRetrievalModel(cfg, head_type="text+toy", vocab_size=256).eval()
    path = tmp_path / "toy.pt"
    torch.save({"model": model.state_dict(), "cfg": None}, path)
    state = load_checkpoint_file(str(path))
    torch.manual_seed(1)
    fresh = load_into(OnePeaceRetrievalModel(cfg, head_type="text+toy", vocab_size=256).eval(), state["model"])
    torch.testing.assert_close(fresh.encode("toy", src_toys=toy_batch()), model.encode("toy", src_toys=toy_batch()),
                               rtol=0, atol=0)
    # keys of the new modality follow the same rules: a partial toy branch is an error
    partial = dict(state["model"])
    partial.pop("encoder_wrapper.fusion_model.layers.1.toy_ffn.3.weight")
    with pytest.raises(CheckpointMismatchError, match="toy_ffn"):
        load_into(OnePeaceRetrievalModel(cfg, head_type="text+toy", vocab_size=256), partial)
    # a text-only model loads the checkpoint, ignoring the toy keys
    text_only = load_into(OnePeaceRetrievalModel(cfg, head_type="text", vocab_size=256), state["model"])
    assert text_only.toy_proj is None


def test_hub(toy, fixture_bpe_dir, user_dir):
    from fairseq import tasks
    from omegaconf import OmegaConf

    from one_peace.hub import OnePeaceHubInterface

    torch.manual_seed(0)
    task = tasks.setup_task(OmegaConf.create({"_name": "base_task", "bpe_dir": fixture_bpe_dir}))
    model = OnePeaceRetrievalModel(tiny_config(OnePeaceRetrievalConfig), head_type="text+toy",
                                   vocab_size=len(task.dictionary))
    hub = OnePeaceHubInterface(model, task, cfg=None, device="cpu", dtype=torch.float32)
    items = toy_batch(2).tolist()
    net_input = hub.process("toy", items)
    emb = hub.extract_toy_features(**hub.process_toy(items))
    torch.testing.assert_close(emb, hub.extract_features("toy", **net_input))
    text = hub.extract_text_features(hub.process_text(["a toy", "another toy"]))
    assert (emb @ text.T).shape == (2, 2)
    with pytest.raises(ValueError, match="no image branch"):
        hub.process("image", ["x.jpg"])
