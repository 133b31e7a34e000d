"""one-peace-index decodes the next batch while the model embeds the current one (search/decode_ahead.py):
the vectors, the failures and the order of the commits stay those of embedding batch after batch."""
import shutil

import numpy as np
import pytest
from helpers import MEDIA, require
from search_helpers import write_png, write_wav

from one_peace.search.decode_ahead import planned_ahead
from one_peace.search.embed import embed, load_hub
from one_peace.search.embed_sources import MediaOptions, embed_sources
from one_peace.search.scan import Source

pytest_plugins = ["search_fixtures"]  # search_checkpoint


def media_files(root):
    """Images and sounds with a corrupt file inside a batch of 2 (and one alone at the end)."""
    root.mkdir()
    images = []
    for name in ("dog.JPEG", "elephant.JPEG", "pokemons.jpg"):
        images.append(root / name)
        shutil.copy(require(MEDIA / name), images[-1])
    write_png(root / "red.png", (220, 20, 20))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    (root / "empty.png").write_bytes(b"")
    images = [images[0], root / "corrupt.jpg", images[1], root / "red.png", images[2], root / "empty.png"]
    write_wav(root / "tone.wav", 440.0)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt nothing else")
    shutil.copy(require(MEDIA / "cow.flac"), root / "cow.flac")
    sounds = [root / "tone.wav", root / "broken.wav", root / "cow.flac"]
    return {"image": [str(p) for p in images], "audio": [str(p) for p in sounds]}


@pytest.fixture(scope="module")
def hub(search_checkpoint, fixture_bpe_dir):
    return load_hub(search_checkpoint, "one_peace_retrieval", "float32", "cpu", fixture_bpe_dir,
                    ("text", "image", "audio"))


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_batches_give_the_vectors_and_failures_of_embedding_them_one_after_another(hub, tmp_path, modality):
    paths = media_files(tmp_path / "files")[modality]
    sources = [Source(path=p, modality=modality, size=0, mtime_ns=0) for p in paths]
    commits = []
    embed_sources(hub, modality, sources, 2, None, MediaOptions(), commits.append)
    # one commit per batch, in file order within the batch's ok/failed lists, as before
    assert [len(c) for c in commits] == [2] * (len(paths) // 2) + [1] * (len(paths) % 2)
    got = {entry[0].path: entry for batch in commits for entry in batch}
    assert sorted(got) == sorted(paths)
    for start in range(0, len(paths), 2):  # the sequential path: each batch decoded, then embedded
        batch = paths[start:start + 2]
        vectors, good, failed = embed(hub, modality, batch)
        for j, i in enumerate(good):
            assert got[batch[i]][1] == "ok"
            np.testing.assert_array_equal(got[batch[i]][3][0][2], vectors[j])
        for i, reason in failed:
            assert got[batch[i]][1] == "failed" and got[batch[i]][2] == reason and reason
    bad = {"image": ["corrupt.jpg", "empty.png"], "audio": ["broken.wav"]}[modality]
    assert sorted(p.rsplit("/", 1)[1] for p, e in got.items() if e[1] == "failed") == bad


def test_a_batch_that_cannot_be_planned_stops_after_the_earlier_batches():
    """Batches before the one whose reading fails are handed out (and committed) first, in order."""
    def plan(chunk):
        if chunk == "c":
            raise OSError("cannot read c")
        return chunk.upper()

    seen = []
    with pytest.raises(OSError, match="cannot read c"):
        for chunk, planned in planned_ahead(["a", "b", "c", "d"], plan):
            seen.append((chunk, planned))
    assert seen == [("a", "A"), ("b", "B")]
