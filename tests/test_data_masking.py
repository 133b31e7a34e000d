"""Pretraining masks: count rules, structure, determinism, and the official fixture's masks."""
import math
import os
import pathlib

import numpy as np
import pytest
import torch

from one_peace.data_utils.bpe import GPT2BPE, TextTokenizer, word_start_table
from one_peace.data_utils.collate import collate_ids
from one_peace.data_utils.dictionary import Dictionary
from one_peace.data_utils.masking import (
    as_numpy_rng,
    block_span_mask_1d,
    compute_block_mask_1d,
    image_complementary_mask,
    image_random_mask,
    preserve_ids_from_mask,
    text_token_mask,
    text_whole_word_mask,
)


def _shared_dir() -> pathlib.Path:
    env = os.environ.get("ONE_PEACE_SHARED")
    for cand in (pathlib.Path(__file__).resolve().parents[1].parent / "shared", env and pathlib.Path(env)):
        if cand and cand.is_dir():
            return cand
    raise RuntimeError("shared assets not found: expected ../shared next to the repository "
                       "or $ONE_PEACE_SHARED")


SHARED = _shared_dir()
BPE_DIR = SHARED / "assets" / "bpe"
FIXTURES = SHARED / "fixtures" / "official-parity"


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(str(BPE_DIR))


@pytest.fixture(scope="module")
def fixture():
    inputs = torch.load(FIXTURES / "inputs.pt", weights_only=True)
    masks = torch.load(FIXTURES / "pretrain_losses.pt", weights_only=True)["masks"]
    return inputs, masks


def _assert_whole_words(mask: torch.Tensor, starts: np.ndarray):
    """mask: length n+1 (CLS first); starts: word-start flag per token (n tokens, EOS last)."""
    m = mask.numpy()[1:]
    n = len(starts)
    assert not mask[0] and not m[n - 1]
    for i in range(n - 1):
        if not m[i]:
            continue
        s = i
        while not starts[s]:
            s -= 1
        e = i + 1
        while e < n - 1 and not starts[e]:
            e += 1
        assert m[s:e].all(), (i, s, e, m)


# ---- text -----------------------------------------------------------------------------------
def test_whole_word_mask_counts_and_words(tokenizer):
    text = "unbelievably antidisestablishmentarianism makes the photographer's dog sleepy " * 3
    tokens = tokenizer.encode(text)
    starts = np.array([tokenizer.is_word_start(t) for t in tokens.tolist()])
    starts[-1] = True
    n_words = int(starts[:-1].sum())
    assert n_words < len(tokens) - 1  # there are multi-piece words
    for seed in range(20):
        for ratio in (0.15, 0.4):
            mask = text_whole_word_mask(tokens, tokenizer.is_word_start, ratio, np.random.default_rng(seed))
            assert mask.dtype == torch.bool and mask.shape == (len(tokens) + 1,)
            _assert_whole_words(mask, starts)
            masked_words = int((mask.numpy()[1:] & starts).sum())
            assert masked_words == math.ceil(n_words * ratio)
    # a per-id table works like the callable
    a = text_whole_word_mask(tokens, tokenizer.word_starts, 0.4, np.random.default_rng(1))
    b = text_whole_word_mask(tokens, tokenizer.is_word_start, 0.4, np.random.default_rng(1))
    assert torch.equal(a, b)
    # ids outside the table count as word starts in both
    table = tokenizer.word_starts
    odd = torch.cat([tokens[:5], torch.tensor([len(table) + 3, -1]), tokens[5:]])
    for seed in range(5):
        a = text_whole_word_mask(odd, table, 0.5, np.random.default_rng(seed))
        b = text_whole_word_mask(odd, tokenizer.is_word_start, 0.5, np.random.default_rng(seed))
        assert torch.equal(a, b)


def test_text_token_mask_counts_and_avoidance():
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        avoid = text_whole_word_mask(torch.arange(4, 4 + n), lambda t: True, 0.15, rng)
        mask = text_token_mask(n, 0.4, rng, avoid=avoid)
        assert mask.shape == (n + 1,) and not mask[0] and not mask[n]
        assert int(mask.sum()) == int((n - 1) * 0.4)
        free = (n - 1) - int(avoid.sum())
        assert int((mask & avoid).sum()) == max(0, int((n - 1) * 0.4) - free)
    # nearly everything avoided: falls back to avoided tokens
    avoid = torch.tensor([False] + [True] * 9 + [False])
    assert int(text_token_mask(10, 0.9, rng, avoid=avoid).sum()) == 8
    with pytest.raises(ValueError):
        text_token_mask(5, 0.4, rng, avoid=torch.zeros(3, dtype=torch.bool))


# ---- image ----------------------------------------------------------------------------------
def test_image_masks_counts_and_complementarity():
    rng = np.random.default_rng(0)
    for _ in range(10):
        img = image_random_mask(256, 0.75, rng)
        assert img.shape == (257,) and not img[0] and int(img.sum()) == 192
        vl = image_complementary_mask(img, 0.6875, rng)
        assert not vl[0] and int(vl.sum()) == 176
        visible_img = set(preserve_ids_from_mask(img).tolist()) - {0}
        visible_vl = set(preserve_ids_from_mask(vl).tolist()) - {0}
        assert len(visible_img) == 64 and len(visible_vl) == 80 and not visible_img & visible_vl
    small = image_complementary_mask(image_random_mask(16, 0.25, rng), 0.5, rng)  # 12 visible > 8 budget
    assert int(small.sum()) == 8


# ---- audio ----------------------------------------------------------------------------------
def _runs(frames: np.ndarray):
    runs, start = [], None
    for i, v in enumerate(list(frames) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_block_span_structure():
    rng = np.random.default_rng(0)
    for T in (10, 49, 74, 300):
        spans = block_span_mask_1d(T, int(T * 0.13), 5, rng)
        for s, e in _runs(spans):
            # interior runs are unions of whole 5-frame spans; edge runs may be clamped to >= 3
            assert e - s >= (5 if 0 < s and e < T else 3), (T, s, e)


@pytest.mark.parametrize("T,ratio", [(74, 0.55), (49, 0.55), (62, 0.45), (749, 0.55), (7, 0.45), (1, 0.55)])
def test_block_mask_exact_count_and_adjustment(T, ratio):
    for seed in range(5):
        mask = compute_block_mask_1d(T, ratio, 5, 0.1, np.random.default_rng(seed))
        assert mask.shape == (T + 1,) and not mask[0]
        assert int(mask.sum()) == int(T * ratio)
        spans = block_span_mask_1d(T, int(T * ((ratio + 0.1) / 5)), 5, np.random.default_rng(seed))
        final = mask.numpy()[1:]
        # the exact-count step only removes (or only adds) single frames
        assert (final <= spans).all() or (final >= spans).all()
        assert int((final != spans).sum()) == abs(int(spans.sum()) - int(T * ratio))


def test_determinism_with_generators():
    def draw(rng):
        return (image_random_mask(256, 0.75, rng), compute_block_mask_1d(100, 0.55, rng=rng),
                text_token_mask(30, 0.4, rng), text_whole_word_mask(torch.arange(10, 40), lambda t: t % 3 == 0,
                                                                    0.4, rng))
    for make in (lambda: np.random.default_rng(7), lambda: torch.Generator().manual_seed(7)):
        first, second = draw(make()), draw(make())
        assert all(torch.equal(a, b) for a, b in zip(first, second))
    a = image_random_mask(256, 0.75, torch.Generator().manual_seed(1))
    b = image_random_mask(256, 0.75, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    with pytest.raises(TypeError):
        as_numpy_rng("seed")


def test_preserve_ids():
    mask = torch.tensor([False, True, False, True, False])
    assert preserve_ids_from_mask(mask).tolist() == [0, 2, 4]
    assert preserve_ids_from_mask(mask).dtype == torch.long


# ---- recorded official masks ----------------------------------------------------------------
def _row_lengths(inputs):
    text = (inputs["src_tokens"] != 1).sum(1) + 1  # + CLS
    audio = (~inputs["audio_padding_masks"]).sum(1)  # CLS + frames
    return text.tolist(), audio.tolist()


def test_fixture_masks_follow_count_rules(fixture):
    inputs, m = fixture
    text_len, audio_len = _row_lengths(inputs)
    assert text_len == [11, 7, 9] and audio_len == [75, 50, 63]
    fixture_dict = Dictionary.from_symbols(inputs["dict_symbols"])
    table = word_start_table(fixture_dict, GPT2BPE(str(BPE_DIR / "encoder.json"), str(BPE_DIR / "vocab.bpe")))
    for b in range(3):
        n_tok = text_len[b] - 1  # incl. EOS
        tokens = inputs["src_tokens"][b, :n_tok]
        starts = table[tokens].numpy().copy()
        starts[-1] = True
        n_words = int(starts[:-1].sum())
        for key, ratio in (("text_mask_indices", 0.15), ("al_text_mask_indices", 0.4)):
            mask = m[key][b]
            assert not mask[text_len[b]:].any()  # pads never masked
            _assert_whole_words(mask[: text_len[b]], starts)
            assert int((mask[1: text_len[b]].numpy() & starts).sum()) == math.ceil(n_words * ratio), key
        vl_text = m["vl_text_mask_indices"][b]
        assert int(vl_text.sum()) == int((n_tok - 1) * 0.4)  # EOS not counted
        assert not vl_text[0] and not vl_text[n_tok] and not (vl_text & m["text_mask_indices"][b]).any()
        img, vl_img = m["image_mask_indices"][b], m["vl_image_mask_indices"][b]
        assert int(img.sum()) == int(4 * 0.75) == 3 and int(vl_img.sum()) == int(4 * 0.6875) == 2
        assert not img[0] and not vl_img[0] and not (~img[1:] & ~vl_img[1:]).any()  # visible sets disjoint
        T = audio_len[b] - 1
        for key, ratio in (("audio_mask_indices", 0.55), ("al_audio_mask_indices", 0.45)):
            mask = m[key][b]
            assert not mask[0] and not mask[T + 1:].any()
            assert int(mask.sum()) == int(T * ratio), (key, b)


def test_fixture_preserve_ids_match_masks(fixture):
    inputs, m = fixture
    text_len, audio_len = _row_lengths(inputs)
    lengths = {"text": text_len, "al_text": text_len, "vl_text": text_len, "image": [5] * 3,
               "vl_image": [5] * 3, "audio": audio_len, "al_audio": audio_len}
    for name, lens in lengths.items():
        ids = collate_ids([preserve_ids_from_mask(m[f"{name}_mask_indices"][b, :lens[b]]) for b in range(3)])
        assert torch.equal(ids, m[f"{name}_preserve_ids"]), name
