"""Tokenisation: GPT-2 BPE and dictionary parity with fairseq, fixture tokens, BPE file handling."""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from one_peace.data_utils import bpe_files
from one_peace.data_utils.bpe import (
    GPT2BPE,
    ChecksumError,
    Dictionary,
    TextTokenizer,
    fetch_bpe_files,
    resolve_bpe_dir,
    word_start_table,
)
from one_peace.data_utils.collate import collate_tokens
from one_peace.data_utils.text import clean_caption


def _shared_dir() -> pathlib.Path:
    env = os.environ.get("ONE_PEACE_SHARED")
    for cand in (pathlib.Path(__file__).resolve().parents[1].parent / "shared", env and pathlib.Path(env)):
        if cand and cand.is_dir():
            return cand
    raise RuntimeError("shared assets not found: expected ../shared next to the repository "
                       "or $ONE_PEACE_SHARED")


SHARED = _shared_dir()
BPE_DIR = SHARED / "assets" / "bpe"
INPUTS = SHARED / "fixtures" / "official-parity" / "inputs.pt"

SAMPLES = [
    "a man is on the street with a dog", " Hello, World!!  It's 2023 -- isn't it?",
    "naïve café déjà vu — 東京 😀", "tabs\tand\nnewlines\n\n  trailing   ", "I'll we've they're he'd",
    "unbelievably antidisestablishmentarianism", "x" * 60, "$12.50 @home #tag 3.14159",
]


@pytest.fixture(scope="module")
def bpe():
    return GPT2BPE(str(BPE_DIR / "encoder.json"), str(BPE_DIR / "vocab.bpe"))


@pytest.fixture(scope="module")
def full_tok():
    return TextTokenizer(str(BPE_DIR))


@pytest.fixture(scope="module")
def inputs():
    return torch.load(INPUTS, weights_only=True)


@pytest.fixture(scope="module")
def fairseq_bpe():
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE as FairseqGPT2BPE
    from fairseq.data.encoders.gpt2_bpe import GPT2BPEConfig

    return FairseqGPT2BPE(GPT2BPEConfig(gpt2_encoder_json=str(BPE_DIR / "encoder.json"),
                                        gpt2_vocab_bpe=str(BPE_DIR / "vocab.bpe")))


# ---- BPE ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_matches_fairseq(bpe, fairseq_bpe, text):
    ours = bpe.encode(" " + text)
    assert ours == fairseq_bpe.encode(" " + text)
    assert bpe.decode(ours) == " " + text == fairseq_bpe.decode(ours)


def test_is_beginning_of_word_matches_fairseq(bpe, fairseq_bpe):
    for token in [str(i) for i in range(0, 50257, 97)] + ["262", "318", "50256"]:
        assert bpe.is_beginning_of_word(token) == fairseq_bpe.is_beginning_of_word(token), token
    # fairseq's whole-word masking treats specials and fillers as word starts
    for token in ["<s>", "<pad>", "</s>", "<unk>", "madeupword0001"]:
        assert bpe.is_beginning_of_word(token)


def test_word_start_table_matches_fairseq_whole_word_mask(bpe):
    from argparse import Namespace

    from fairseq.data import Dictionary as FairseqDictionary
    from fairseq.data.encoders.utils import get_whole_word_mask

    args = Namespace(bpe="gpt2", gpt2_encoder_json=str(BPE_DIR / "encoder.json"),
                     gpt2_vocab_bpe=str(BPE_DIR / "vocab.bpe"))
    expected = get_whole_word_mask(args, FairseqDictionary.load(str(BPE_DIR / "dict.txt"))).bool()
    ours = word_start_table(Dictionary.load(str(BPE_DIR / "dict.txt")), bpe)
    assert torch.equal(ours, expected)


# ---- Dictionary -----------------------------------------------------------------------------
def test_dictionary_ids_match_fairseq(bpe):
    from fairseq.data import Dictionary as FairseqDictionary

    ours = Dictionary.load(str(BPE_DIR / "dict.txt"))
    ref = FairseqDictionary.load(str(BPE_DIR / "dict.txt"))
    assert len(ours) == len(ref) == 50264
    assert ours.symbols == ref.symbols
    assert (ours.bos(), ours.pad(), ours.eos(), ours.unk()) == (0, 1, 2, 3)
    assert (ours.bos(), ours.pad(), ours.eos(), ours.unk()) == (ref.bos(), ref.pad(), ref.eos(), ref.unk())
    for text in SAMPLES:
        line = bpe.encode(" " + text) + " <mask> 99999999"
        expected = ref.encode_line(line, add_if_not_exist=False, append_eos=False).long()
        assert torch.equal(ours.encode_line(line), expected)
        assert torch.equal(ours.encode_line(line, append_eos=True)[-1], torch.tensor(2))
    ids = ours.encode_line(bpe.encode(" hello world"), append_eos=True)
    assert ours.string(ids) == ref.string(ids)
    assert ours[10 ** 6] == "<unk>" and ours.index("never-seen") == 3 and "262" in ours


def test_dictionary_bad_lines(tmp_path):
    bad = tmp_path / "dict.txt"
    bad.write_text("13 5\nnocount\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        Dictionary.load(str(bad))
    bad.write_text("13 5\n13 7\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate"):
        Dictionary.load(str(bad))
    bad.write_text("13 5\n13 7 #fairseq:overwrite\n", encoding="utf-8")
    assert len(Dictionary.load(str(bad))) == 6  # fairseq appends an overwritten duplicate


# ---- Fixture tokens -------------------------------------------------------------------------
def _fixture_bpe_dir(tmp_path, symbols) -> pathlib.Path:
    d = tmp_path / "bpe"
    d.mkdir()
    shutil.copy(BPE_DIR / "encoder.json", d / "encoder.json")
    shutil.copy(BPE_DIR / "vocab.bpe", d / "vocab.bpe")
    (d / "dict.txt").write_text("".join(f"{s} 1\n" for s in symbols[4:]), encoding="utf-8")
    return d


def test_fixture_tokens_dataset_and_hub(tmp_path, inputs):
    symbols = inputs["dict_symbols"]
    assert len(symbols) == 256
    tok = TextTokenizer(str(_fixture_bpe_dir(tmp_path, symbols)), max_src_length=70)
    assert tok.dictionary.symbols == symbols
    assert tok.dictionary == Dictionary.from_symbols(symbols)
    dataset = collate_tokens([tok.encode(c, clean=True) for c in inputs["captions"]], pad_idx=tok.pad)
    assert torch.equal(dataset, inputs["src_tokens"])
    hub = collate_tokens([tok.encode_hub(c) for c in inputs["captions"]], pad_idx=tok.pad)
    assert torch.equal(hub, inputs["src_tokens"])
    # pads per row [0, 4, 2]
    assert (inputs["src_tokens"] == 1).sum(1).tolist() == [0, 4, 2]


def test_tokenizer_full_dictionary(full_tok):
    tok = TextTokenizer(str(BPE_DIR), max_src_length=5, dictionary=full_tok.dictionary)
    ids = tok.encode("A man is on the street with a dog")
    assert ids.dtype == torch.long and ids.tolist()[-1] == 2 and len(ids) == 6  # truncated + EOS
    assert torch.equal(ids[:5], full_tok.encode("A man is on the street with a dog")[:5])
    full = full_tok.encode("A man is on the street", clean=True)
    assert tok.decode(full) == "a man is on the street"
    assert torch.equal(full_tok.encode_hub("A MAN"), full_tok.encode("a man"))
    # encode does not lower-case unless cleaning; hub does
    assert not torch.equal(tok.encode("Dog"), tok.encode_hub("Dog"))
    assert tok.is_word_start(tok.dictionary.index("262"))  # " the"


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_text_rejected(full_tok, text):
    tok = full_tok
    for fn in (tok.encode, tok.encode_hub):
        with pytest.raises(ValueError, match="empty"):
            fn(text)


def test_text_that_cleans_to_empty_is_rejected(full_tok):
    with pytest.raises(ValueError, match=r"'\.\.\.'"):
        full_tok.encode("...", clean=True)


def test_clean_caption():
    assert clean_caption(",.A  Dog\t\tRuns!  \n") == "a dog runs!"
    # punctuation is stripped before whitespace, as the official process_text does
    assert clean_caption("  ,.A dog") == ",.a dog"
    assert clean_caption("...Hello   World") == "hello world"
    assert clean_caption("#tag:; text") == "tag:; text"
    assert clean_caption("one two three four", max_words=2) == "one two"
    assert clean_caption("a\tb") == "a b"


# ---- BPE file discovery and fetch -----------------------------------------------------------
def test_explicit_bpe_dir_without_files_is_an_error_naming_it(tmp_path, monkeypatch, user_dir):
    """The task's --bpe-dir and the hub's bpe_dir= never fall back to the env var or the cache."""
    from fairseq import tasks
    from omegaconf import OmegaConf

    monkeypatch.setenv("ONE_PEACE_BPE_DIR", str(BPE_DIR))  # a good fallback exists, and is not used
    given = tmp_path / "my_bpe"
    given.mkdir()
    with pytest.raises(FileNotFoundError, match=f"BPE directory {given} \\(from bpe_dir argument\\)"):
        tasks.setup_task(OmegaConf.create({"_name": "base_task", "bpe_dir": str(given)}))
    assert tasks.setup_task(OmegaConf.create({"_name": "base_task", "bpe_dir": None})).dictionary is not None


def test_resolve_bpe_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("ONE_PEACE_BPE_DIR", raising=False)
    monkeypatch.setenv("ONE_PEACE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        resolve_bpe_dir()
    msg = str(err.value)
    assert str(tmp_path / "cache" / "bpe") in msg and "encoder.json" in msg and "fetch" in msg
    monkeypatch.setenv("ONE_PEACE_BPE_DIR", str(BPE_DIR))
    assert resolve_bpe_dir() == str(BPE_DIR)
    assert resolve_bpe_dir(str(BPE_DIR)) == str(BPE_DIR)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(BPE_DIR / "dict.txt", partial / "dict.txt")
    with pytest.raises(FileNotFoundError, match="is missing encoder.json, vocab.bpe. Fetch") as err:
        resolve_bpe_dir(str(partial))
    assert str(partial) in str(err.value)


def test_hard_coded_sha256_match_published_files():
    for name in bpe_files.BPE_FILES:
        assert hashlib.sha256((BPE_DIR / name).read_bytes()).hexdigest() == bpe_files.BPE_SHA256[name]


def test_fetch_from_file_urls(tmp_path, monkeypatch):
    base = BPE_DIR.as_uri() + "/"
    dest = tmp_path / "fetched"
    assert fetch_bpe_files(str(dest), base_urls=[tmp_path.as_uri() + "/nowhere/", base]) == str(dest)
    for name in bpe_files.BPE_FILES:
        assert (dest / name).read_bytes() == (BPE_DIR / name).read_bytes()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]
    # default destination = cache under $ONE_PEACE_CACHE, then resolvable
    monkeypatch.delenv("ONE_PEACE_BPE_DIR", raising=False)
    monkeypatch.setenv("ONE_PEACE_CACHE", str(tmp_path / "cache"))
    fetch_bpe_files(base_urls={n: (BPE_DIR / n).as_uri() for n in bpe_files.BPE_FILES})
    assert resolve_bpe_dir() == str(tmp_path / "cache" / "bpe")


def test_fetch_rejects_corrupted_file(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in bpe_files.BPE_FILES:
        shutil.copy(BPE_DIR / name, mirror / name)
    data = bytearray((mirror / "vocab.bpe").read_bytes())
    data[100] ^= 1
    (mirror / "vocab.bpe").write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError, match="vocab.bpe.*sha256"):
        fetch_bpe_files(str(dest), base_urls=mirror.as_uri())
    assert not (dest / "vocab.bpe").exists()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]
    with pytest.raises(OSError, match="could not download encoder.json"):
        fetch_bpe_files(str(tmp_path / "d2"), base_urls=(tmp_path / "missing").as_uri())


def test_cli_fetch_and_no_fairseq_import(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    dest = tmp_path / "cli"
    code = ("import sys, runpy; sys.argv = ['bpe', 'fetch', '--dest', sys.argv[1], '--base-url', sys.argv[2]]\n"
            "import one_peace.data_utils.bpe, one_peace.data_utils.image, one_peace.data_utils.audio\n"
            "import one_peace.data_utils.masking, one_peace.data_utils.tsv, one_peace.data_utils.collate\n"
            "assert 'fairseq' not in sys.modules\n"
            "runpy.run_module('one_peace.data_utils.bpe', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(dest), BPE_DIR.as_uri()], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(bpe_files.BPE_FILES)
