"""WebDataset tar shards as training data (``data_utils/shards.py``, ``shard_dataset.py``, ``tsv_to_shards.py``,
``tasks/shard_iterator.py``): brace patterns, the split over ranks and workers, the shuffle buffer, bad
samples and truncated tars, the converter, and resuming an epoch.  Training runs: ``test_shards_training.py``."""
import errno
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from webdataset import TarWriter

from one_peace.data_utils import member_files, synthetic
from one_peace.data_utils.dataset import BadSampleError, TSVDataset
from one_peace.data_utils.member_files import member_file
from one_peace.data_utils.shard_dataset import LoaderLayout, SampleFields, ShardDataset, ShardRows
from one_peace.data_utils.shards import (
    ShardList,
    consumed_batches,
    count_samples,
    epoch_order,
    expand_shards,
    is_shard_spec,
    read_shard,
    round_robin,
    shard_sizes,
)
from one_peace.data_utils.tsv_to_shards import convert
from one_peace.data_utils.tsv_to_shards import main as convert_main

COLUMNS = ("image_id", "image", "caption")
FIELDS = SampleFields(*COLUMNS, ("jpg", "png"))


class Echo(TSVDataset):
    """Rows back as they come (no decoding): what the split and order tests need."""

    def __init__(self, shards, split="train", skip_bad_samples=True):
        super().__init__(split, ShardRows(shards, COLUMNS), skip_bad_samples)

    def load_item(self, index, row):
        with open(self.resolve(row["image"]), "rb") as fh:
            data = fh.read()
        if data.startswith(b"bad"):
            raise ValueError(f"cannot read image {row['image']}: not an image")
        return {"index": index, "caption": row["caption"], "bytes": data}

    def collate(self, samples):
        return {"net_input": {}, "index": [s["index"] for s in samples]}


def write_shards(folder, sizes, sizes_json=True, start=0):
    """Shards of ``sizes`` samples: key ``s<shard>_<i>``, a .jpg member holding the key, a .txt caption."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, size in enumerate(sizes):
        with TarWriter(str(folder / f"{start + n:05d}.tar")) as writer:
            for i in range(size):
                key = f"s{start + n}_{i}"
                writer.write({"__key__": key, "jpg": key.encode(), "txt": f"caption of {key}"})
    if sizes_json:
        (folder / "sizes.json").write_text(json.dumps({f"{start + n:05d}.tar": s for n, s in enumerate(sizes)}))
    return str(folder / f"{{{start:05d}..{start + len(sizes) - 1:05d}}}.tar")


def dataset(spec, shuffle_buffer=0, seed=1, **kwargs):
    shards = ShardList.from_spec(spec)
    return ShardDataset(Echo(shards, **kwargs), shards, FIELDS, seed=seed, shuffle_buffer=shuffle_buffer)


def worker_keys(ds, epoch, layout, worker):
    """What one loader worker yields (run in this process as worker ``worker``)."""
    ds.configure(epoch, layout)
    chosen = ds.shards_of(epoch, layout)[layout.rank][worker]
    return [None if s is None else s["caption"].split()[-1]
            for s in (ds.decode(r) for r in ds.raw_samples(chosen, worker))]


def test_brace_patterns_and_sizes(tmp_path):
    spec = write_shards(tmp_path / "a", [3, 2, 4])
    assert is_shard_spec(spec) and is_shard_spec(f"{spec}::{tmp_path}/b/x.tar")
    assert not is_shard_spec("train.tsv") and not is_shard_spec("a.tar,b.tsv") and not is_shard_spec(None)
    assert expand_shards(spec) == [str(tmp_path / "a" / f"0000{i}.tar") for i in range(3)]
    assert expand_shards("d/{00008..00010}.tar::e/{a,b}.tar") == [
        "d/00008.tar", "d/00009.tar", "d/00010.tar", "e/a.tar", "e/b.tar"]
    with pytest.raises(ValueError, match="'d/x.tsv' is not a .tar shard"):
        expand_shards("d/{a.tar,x.tsv}")
    with pytest.raises(ValueError, match="names the shard d/a.tar more than once"):
        expand_shards("d/a.tar::d/a.tar")
    with pytest.raises(FileNotFoundError, match="shard not found: .*00003.tar"):
        ShardList.from_spec(str(tmp_path / "a" / "{00000..00003}.tar"))

    shards = ShardList.from_spec(spec)
    assert shards.sizes == (3, 2, 4) and shards.total == 9 and list(shards.offsets) == [0, 3, 5]
    assert shards.sizes_from == str(tmp_path / "a" / "sizes.json")
    # without sizes.json: img2dataset's stats files, else the tar headers (the same counts)
    os.remove(tmp_path / "a" / "sizes.json")
    (tmp_path / "a" / "00001_stats.json").write_text(json.dumps({"successes": 2, "count": 5}))
    assert shard_sizes(expand_shards(spec)) == ([3, 2, 4], ["tar headers", "img2dataset's _stats.json", "tar headers"])
    assert count_samples(str(tmp_path / "a" / "00002.tar")) == 4
    # other URLs (webdataset's gopen: pipe:, http...) need their counts named
    with pytest.raises(ValueError, match="task.shard_sizes"):
        shard_sizes([f"pipe:cat {tmp_path}/a/00000.tar"])
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({f"pipe:cat {tmp_path}/a/00000.tar": 3}))
    url = f"pipe:cat {tmp_path}/a/00000.tar"
    assert shard_sizes([url], str(counts)) == ([3], [str(counts)])
    assert [s["__key__"] for s in read_shard(url, 3)] == ["s0_0", "s0_1", "s0_2"]


@pytest.mark.parametrize("sizes", [[5, 3, 4, 6, 2, 5, 1], [4, 4, 4, 4]])
def test_two_ranks_two_workers_read_every_sample_once(tmp_path, sizes):
    ds = dataset(write_shards(tmp_path, sizes))
    every = sorted(f"s{n}_{i}" for n, size in enumerate(sizes) for i in range(size))
    for epoch in (1, 2):
        seen = []
        for rank in (0, 1):
            layout = LoaderLayout(batch_size=3, rank=rank, world_size=2, num_workers=2)
            for worker in (0, 1):
                seen += worker_keys(ds, epoch, layout, worker)
        assert sorted(seen) == every  # nothing twice, nothing dropped (7 shards do not divide by 4 readers)
    # the rule: positions = rank (mod 2) of the epoch's order, then = worker (mod 2) of the rank's
    layout = LoaderLayout(batch_size=3, rank=1, world_size=2, num_workers=2)
    order = epoch_order(len(sizes), 1, 2, True)
    assert ds.shards_of(2, layout)[1] == [order[1::2][0::2], order[1::2][1::2]]
    assert epoch_order(len(sizes), 1, 2, True) != epoch_order(len(sizes), 1, 3, True)  # reshuffled per epoch


def test_the_loader_interleaves_workers_as_planned(tmp_path):
    """The DataLoader's round-robin over its workers, which resuming relies on, with unequal workers."""
    ds = dataset(write_shards(tmp_path, [7, 1, 5]))  # worker 0: shards 0 and 2 (12 samples), worker 1: 1
    layout = LoaderLayout(batch_size=2, rank=0, world_size=1, num_workers=2, shuffle=False)
    ds.configure(1, layout)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collater, num_workers=2)
    batches = [b["keys"] for b in loader]
    counts = ds.batch_counts(1, layout)[0]
    assert counts == [6, 1] and round_robin(counts) == [0, 1, 0, 0, 0, 0, 0]
    assert [b[0].split("_")[0] in ("s0", "s2") for b in batches] == [w == 0 for w in round_robin(counts)]
    assert consumed_batches(counts, 3) == [2, 1]


def test_shuffle_buffer_changes_the_order_not_the_set(tmp_path):
    spec = write_shards(tmp_path, [20, 20])
    layout = LoaderLayout(batch_size=4, num_workers=1, shuffle=True)
    plain = worker_keys(dataset(spec, shuffle_buffer=0), 1, layout, 0)
    buffered = worker_keys(dataset(spec, shuffle_buffer=10), 1, layout, 0)
    assert buffered != plain and sorted(buffered) == sorted(plain) and len(plain) == 40
    # without the buffer only the shard order moves; with it the samples of the two shards mix
    def switches(keys):
        return sum(a.split("_")[0] != b.split("_")[0] for a, b in zip(keys, keys[1:]))

    assert switches(plain) == 1 and switches(buffered) > 2
    assert worker_keys(dataset(spec, shuffle_buffer=10), 1, layout, 0) == buffered  # seeded
    assert worker_keys(dataset(spec, shuffle_buffer=10), 2, layout, 0) != buffered  # per epoch
    assert worker_keys(dataset(spec, shuffle_buffer=10, seed=2), 1, layout, 0) != buffered
    valid = LoaderLayout(batch_size=4, num_workers=1, shuffle=False)  # validation: listed order
    assert worker_keys(dataset(spec, shuffle_buffer=10), 1, valid, 0) == [f"s{n}_{i}" for n in (0, 1) for i in range(20)]


def test_corrupt_samples_and_truncated_tars_are_skipped_logged_and_counted(tmp_path, caplog):
    folder = tmp_path / "shards"
    folder.mkdir()
    with TarWriter(str(folder / "00000.tar")) as writer:
        writer.write({"__key__": "good0", "jpg": b"fine", "txt": "a"})
        writer.write({"__key__": "corrupt", "jpg": b"bad bytes", "txt": "b"})
        writer.write({"__key__": "notext", "jpg": b"fine", "json": "{}"})
        writer.write({"__key__": "latin1", "png": b"fine", "txt": "caf\xe9".encode("latin-1")})
    whole = io.BytesIO()
    with TarWriter(whole) as writer:
        for i in range(6):
            writer.write({"__key__": f"t{i}", "jpg": b"x" * 3000, "txt": f"caption t{i}"})
    data = whole.getvalue()
    (folder / "00001.tar").write_bytes(data[: len(data) // 2])  # cut inside the fourth sample
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": 4, "00001.tar": 6}))
    ds = dataset(str(folder / "{00000..00001}.tar"))
    layout = LoaderLayout(batch_size=4, num_workers=1, shuffle=False)
    with caplog.at_level(logging.WARNING):
        items = worker_keys(ds, 1, layout, 0)
    assert items == ["a", None, None, None, "t0", "t1", "t2", None, None, None]
    shard0, shard1 = folder / "00000.tar", folder / "00001.tar"
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{shard0}, sample 'corrupt': cannot read image {shard0}/corrupt.jpg" in m for m in messages)
    assert any(f"{shard0}, sample 'notext': 'no .txt member (the caption); members: jpg, json'" in m
               for m in messages)
    assert any(f"{shard0}, sample 'latin1': member latin1.txt is not UTF-8" in m for m in messages)
    truncated = [m for m in messages if str(shard1) in m]
    assert len(truncated) == 1 and "shard ends after 3 of its 6 samples" in truncated[0]
    assert ds.processor.num_skipped == 6
    batch = ds.collater([ds.decode(r) for r in ds.raw_samples([0], 0)])
    assert batch["num_skipped"] == 3 and batch["keys"] == ["good0"] and batch["index"] == [0]

    # validation (skipping off): the first bad sample stops with the member named
    strict = dataset(str(folder / "{00000..00001}.tar"), split="valid", skip_bad_samples=False)
    with pytest.raises(BadSampleError, match=f"{shard0}, sample 'corrupt': cannot read image {shard0}/corrupt.jpg"):
        worker_keys(strict, 1, layout, 0)
    # a shard holding more samples than its size says would desynchronise the ranks: an error
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": 3, "00001.tar": 6}))
    with pytest.raises(ValueError, match="holds more than the 3 samples its size says"):
        worker_keys(dataset(str(folder / "{00000..00001}.tar")), 1, layout, 0)


def test_member_files_are_removed_and_errors_name_the_member(tmp_path):
    with pytest.raises(ValueError) as err, member_file(b"data", "shards/00001.tar/k.png") as path:
        assert open(path, "rb").read() == b"data"
        raise ValueError(f"cannot read image {path}: broken")
    assert str(err.value) == "cannot read image shards/00001.tar/k.png: broken"
    assert not os.path.exists(path)


def test_a_full_ram_folder_spills_member_files_to_the_temporary_folder(tmp_path, monkeypatch):
    """Docker's 64 MB /dev/shm holds less than one long video: such a member goes to the temporary folder
    instead of the sample being skipped as bad."""
    full, spill = tmp_path / "shm", tmp_path / "tmp"
    full.mkdir(), spill.mkdir()
    monkeypatch.setattr(member_files, "scratch_dirs", lambda: [str(full), str(spill)])
    real_mkstemp = member_files.tempfile.mkstemp

    def mkstemp(**kwargs):
        fd, path = real_mkstemp(**kwargs)
        if kwargs["dir"] == str(full):  # this folder is full: writes fail as on a full tmpfs
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(member_files.tempfile, "mkstemp", mkstemp)
    with member_file(b"x" * 100_000, "shards/00000.tar/clip.mp4") as path:
        assert os.path.dirname(path) == str(spill) and open(path, "rb").read() == b"x" * 100_000
        assert os.listdir(full) == []  # the failed file is gone
    assert os.listdir(spill) == []

    def no_inodes(**kwargs):  # a tmpfs out of inodes refuses the file itself
        if kwargs["dir"] == str(full):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(**kwargs)

    monkeypatch.setattr(member_files.tempfile, "mkstemp", no_inodes)
    with member_file(b"data", "shards/00000.tar/k.jpg") as path:
        assert os.path.dirname(path) == str(spill)


def test_member_files_left_by_killed_workers_are_removed(tmp_path, monkeypatch):
    """A worker killed while it decodes cannot remove its member file; the next process's first member file
    removes the old files of processes that no longer run, and leaves those of running ones."""
    monkeypatch.setattr(member_files, "scratch_dirs", lambda: [str(tmp_path)])
    monkeypatch.setattr(member_files, "_swept_in", None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    old = time.time() - 2 * member_files.STALE_SECONDS
    left = tmp_path / f"{member_files.PREFIX}{gone.pid}_abc.jpg"
    recent = tmp_path / f"{member_files.PREFIX}{gone.pid}_def.jpg"  # could be another PID namespace's, in use
    running = tmp_path / f"{member_files.PREFIX}{os.getppid()}_ghi.jpg"
    for path in (left, recent, running):
        path.write_bytes(b"x")
    for path in (left, running):
        os.utime(path, (old, old))
    with member_file(b"data", "shards/00000.tar/k.jpg"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, running.name])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_image_split(str(out), "train", 12, seed=5)
    return out


def test_converter_round_trip_gives_the_tsv_datasets_items(images, tmp_path, fixture_bpe_dir, capsys):
    from one_peace.data_utils.bpe import TextTokenizer
    from one_peace.data_utils.pretrain_datasets import ImageTextPretrainDataset
    from one_peace.data_utils.tsv import TSVReader

    tsv = images / "image_text_train.tsv"
    lines = tsv.read_text().splitlines()
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(images / "images")
    bad = ["gone\timages/train/missing.png\ta lost picture", "short\timages/train/train_000000.png"]
    (data / "train.tsv").write_text("\n".join(lines[:6] + bad + lines[6:]) + "\n")
    assert convert_main([str(data / "train.tsv"), str(tmp_path / "shards"), "--samples-per-shard", "5"]) == 0
    out = capsys.readouterr()
    pattern = str(tmp_path / "shards" / "{00000..00002}.tar")
    assert f"12 samples in 3 shards, 2 bad rows skipped; task.data={pattern}" in out.out
    assert f"{data / 'train.tsv'}, row 7: image file not found: {data}/images/train/missing.png" in out.err
    assert f"{data / 'train.tsv'}, row 8: missing fields" in out.err
    assert json.loads((tmp_path / "shards" / "sizes.json").read_text()) == {
        "00000.tar": 5, "00001.tar": 5, "00002.tar": 2}
    with tarfile.open(tmp_path / "shards" / "00001.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000010.json", "000010.png", "000010.txt"]
        row = json.loads(tar.extractfile("000010.json").read())
        assert row == dict(zip(("image_id", "image", "caption"), lines[6].split("\t")))  # row 7 of 12 good ones
        assert tar.extractfile("000010.png").read() == (images / row["image"]).read_bytes()
        assert tar.extractfile("000010.txt").read().decode() == row["caption"]

    # the same items as the TSV dataset's (the sample index is the row's: same masks, same crops)
    tokenizer = TextTokenizer(fixture_bpe_dir)
    reference = ImageTextPretrainDataset("train", TSVReader(tsv), tokenizer, patch_image_size=32)
    shards = ShardList.from_spec(pattern)
    processor = ImageTextPretrainDataset("train", ShardRows(shards, COLUMNS), tokenizer, patch_image_size=32)
    ds = ShardDataset(processor, shards, FIELDS)
    ds.configure(1, LoaderLayout(batch_size=4, shuffle=False))
    items = [ds.decode(r) for r in ds.raw_samples([0, 1, 2], 0)]
    assert len(items) == 12
    for i, item in enumerate(items):
        want = reference[i]
        assert set(want) | {"__key__"} == set(item)
        for key, value in want.items():
            assert torch.equal(item[key], value) if torch.is_tensor(value) else item[key] == value, (i, key)

    # a folder that already holds shards is refused with one line
    assert convert_main([str(data / "train.tsv"), str(tmp_path / "shards")]) == 2
    assert "tsv_to_shards: error: " in capsys.readouterr().err
    (tmp_path / "other.tsv").write_text("uniq_id\tframes\ttext\n1\ta|b\tx\n")
    with pytest.raises(ValueError, match="which column holds the media.*found none; name it with --media-column"):
        convert(str(tmp_path / "other.tsv"), str(tmp_path / "x"))


def epoch_batches(iterator, shuffle=True):
    return [b.get("keys", []) for b in iterator.next_epoch_itr(shuffle=shuffle)]


def test_epoch_iterator_equal_steps_per_rank_and_exact_resume(tmp_path, caplog):
    from one_peace.tasks.shard_iterator import ShardEpochBatchIterator

    spec = write_shards(tmp_path, [5, 3, 4, 6, 2, 5, 1])  # 26 samples, ranks of unequal size

    def iterator(rank, **kwargs):
        return ShardEpochBatchIterator(dataset(spec, shuffle_buffer=4), 3, rank=rank, world_size=2, num_workers=2,
                                       **kwargs)

    full = {rank: epoch_batches(iterator(rank)) for rank in (0, 1)}
    assert len(full[0]) == len(full[1]) == len(iterator(0))  # the same steps on every rank
    keys = [k for rank in (0, 1) for batch in full[rank] for k in batch]
    assert sorted(keys) == sorted(f"s{n}_{i}" for n, s in enumerate([5, 3, 4, 6, 2, 5, 1]) for i in range(s))
    short = min((0, 1), key=lambda r: sum(map(bool, full[r])))
    assert full[short][-1] == [] and all(full[short][:sum(map(bool, full[short]))])  # padding comes last

    for rank in (0, 1):
        for taken in (1, 4, len(full[rank]) - 1):
            first = iterator(rank)
            itr = first.next_epoch_itr()
            for _ in range(taken):
                next(itr)
            state = first.state_dict()
            assert (state["epoch"], state["iterations_in_epoch"]) == (1, taken)
            resumed = iterator(rank)
            resumed.load_state_dict(state)
            assert epoch_batches(resumed) == full[rank][taken:], (rank, taken)
            assert resumed.state_dict()["epoch"] == 2 and resumed.next_epoch_idx == 2

    with pytest.raises(ValueError, match="7 shards for 8 ranks; every rank needs a shard of its own"):
        ShardEpochBatchIterator(dataset(spec), 3, rank=0, world_size=8)

    # a checkpoint of another split (here: other loader workers) starts the epoch over, logged
    first = iterator(0)
    itr = first.next_epoch_itr()
    next(itr)
    other = ShardEpochBatchIterator(dataset(spec, shuffle_buffer=4), 3, rank=0, world_size=2, num_workers=1)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(first.state_dict())
    assert "resuming epoch 1 from its start" in caplog.text
    assert sum(len(b) for b in epoch_batches(other)) == sum(len(b) for b in full[0])


def loaded_task(task_class, config_class, data, **fields):
    cfg = config_class(data=data, shuffle_buffer=0, **fields)
    cfg._name = {"VideoTextPretrainTask": "video_text_pretrain", "ImageTextRetrievalTask": "image_text_retrieval"}[
        task_class.__name__]
    task = task_class.setup_task(cfg)
    task.load_dataset("train")
    return task


def assert_batches_match_the_tsv(task_class, config_class, tsv, pattern, rows, **fields):
    """The task's batches from shards (listed order) are the batches its TSV dataset makes of ``rows``."""
    from_tsv = loaded_task(task_class, config_class, tsv, **fields)
    from_shards = loaded_task(task_class, config_class, pattern, **fields)
    shards = from_shards.dataset("train")
    assert isinstance(shards, ShardDataset) and not from_shards.has_sharded_data("train")
    batches = list(from_shards.get_batch_iterator(shards, max_sentences=2, epoch=1).next_epoch_itr(shuffle=False))
    reference = from_tsv.dataset("train")
    assert len(batches) == len(rows)
    for indices, batch in zip(rows, batches):
        want = reference.collater([reference[i] for i in indices])["net_input"]
        assert want.keys() == batch["net_input"].keys()
        assert all(torch.equal(batch["net_input"][k], v) for k, v in want.items())
    return batches


def test_video_pretraining_task_reads_mp4_shards_as_its_tsv(tmp_path, fixture_bpe_dir):
    from one_peace.data_utils.synthetic_video import write_video_split
    from one_peace.tasks.pretrain_tasks.video_text_pretrain import VideoTextPretrainConfig, VideoTextPretrainTask

    write_video_split(str(tmp_path), "train", 5, seed=1)
    pattern = convert(str(tmp_path / "video_text_train.tsv"), str(tmp_path / "shards"), samples_per_shard=2)["pattern"]
    batches = assert_batches_match_the_tsv(  # the same frames and tube masks as from the TSV
        VideoTextPretrainTask, VideoTextPretrainConfig, str(tmp_path / "video_text_train.tsv"), pattern,
        [[0, 1], [2, 3], [4]], bpe_dir=fixture_bpe_dir, patch_image_size=32, num_frames=2)
    assert [b["keys"] for b in batches] == [["000000", "000001"], ["000010", "000011"], ["000020"]]
    assert batches[0]["net_input"]["src_videos"].shape == (2, 2, 3, 32, 32)


def test_image_text_retrieval_trains_from_shards(images, tmp_path, fixture_bpe_dir):
    from one_peace.tasks.vl_tasks.image_text_retrieval import ImageTextRetrievalConfig, ImageTextRetrievalTask

    tsv = str(images / "image_text_train.tsv")
    pattern = convert(tsv, str(tmp_path / "shards"), samples_per_shard=4)["pattern"]
    batches = assert_batches_match_the_tsv(ImageTextRetrievalTask, ImageTextRetrievalConfig, tsv, pattern,
                                           [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]],
                                           bpe_dir=fixture_bpe_dir, patch_image_size=32)
    assert batches[0]["uniq_ids"] == ["train_0", "train_1"]  # the original row's id, from the .json member
    task = loaded_task(ImageTextRetrievalTask, ImageTextRetrievalConfig, pattern, bpe_dir=fixture_bpe_dir)
    with pytest.raises(ValueError, match=r"image_text_retrieval reads its valid split from a TSV .*not tar shards"):
        task.load_dataset("valid")  # evaluation ranks the TSV's rows against its caption bank
