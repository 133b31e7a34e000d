"""Video in search (docs/SEARCH.md, "Video and sound by their content"): a clip is embedded from frames
spread over its length (so clips that share a black first frame differ), a long video gets one vector per
window with its span (a result points to the moment), and a video's sound track is indexed as audio (a
sound finds the video).  Clips are generated with PyAV in the test's folder."""
import json
import os
import sqlite3

import numpy as np
import pytest
from search_helpers import index_main, search_json, write_png

from one_peace.data_utils.video import sample_indices
from one_peace.search.media_decode import frame_times, segment_windows

pytest_plugins = ["search_fixtures"]  # search_checkpoint

FPS = 8
SIZE = (48, 64)  # height, width


def solid(colour, size=SIZE):
    frame = np.zeros(size + (3,), np.uint8)
    frame[...] = colour
    return frame


def chirp(seconds, low=200.0, high=3000.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (low * t + (high - low) * t ** 2 / (2 * seconds))
    return (0.3 * np.sin(phase)).astype(np.float32)


def write_video(path, frames, fps=FPS, sound=None, metadata=None):
    """An MPEG-4 clip of ``frames`` (H x W x 3 uint8) and, if given, a mono 16 kHz AAC ``sound`` track."""
    import av

    with av.open(str(path), "w") as container:
        container.metadata.update(metadata or {})
        video = container.add_stream("mpeg4", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        audio = None
        if sound is not None:
            audio = container.add_stream("aac", rate=16000)
            audio.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            for start in range(0, len(sound), 1024):
                frame = av.AudioFrame.from_ndarray(sound[None, start:start + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def index(capsys, *argv):
    code, summary, err = index_main(list(argv), capsys)
    assert code == 0, err
    return summary


def vectors_of(index_dir, path):
    with sqlite3.connect(os.path.join(index_dir, "index.sqlite")) as db:
        rows = db.execute("SELECT modality, start_s, end_s, vector FROM vectors WHERE path = ? ORDER BY id",
                          (str(path),)).fetchall()
    return [(m, s, e, np.frombuffer(v, np.float32)) for m, s, e, v in rows]


def test_the_documented_frame_rule():
    # num_frames frames at the centres of equal parts: never the first frame of a longer clip
    assert sample_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_indices(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]  # a short clip repeats frames
    assert frame_times(10.0, 18.0, 4) == [11.0, 13.0, 15.0, 17.0]
    # windows of 15 s; the last ends at the end and overlaps the one before
    assert segment_windows(40.0, 15.0) == [(0.0, 15.0), (15.0, 30.0), (25.0, 40.0)]
    assert segment_windows(15.0, 15.0) == [(0.0, 15.0)]


def test_clips_sharing_a_black_first_frame_do_not_collide(tmp_path, capsys, search_checkpoint, fixture_bpe_dir):
    root = tmp_path / "clips"
    root.mkdir()
    black = solid((0, 0, 0))
    write_video(root / "red.mp4", [black] + [solid((220, 30, 30))] * 15)
    write_video(root / "blue.mp4", [black] + [solid((30, 30, 220))] * 15)
    write_png(tmp_path / "red_query.png", (220, 30, 30), size=SIZE[::-1])
    index_dir = tmp_path / "index"
    summary = index(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir)
    assert summary["embedded"] == 2 and summary["counts"] == {"video": 2}
    (_, _, _, red), = vectors_of(index_dir, root / "red.mp4")
    (_, _, _, blue), = vectors_of(index_dir, root / "blue.mp4")
    assert float(red @ blue) < 0.98  # a first-frame embedding would make them one vector (cosine 1)
    out = search_json([index_dir, "--file", tmp_path / "red_query.png", "--modality", "video", "-k", "2"], capsys)
    assert [h["path"] for h in out["results"]["video"]] == [str(root / "red.mp4"), str(root / "blue.mp4")]
    for name in ("red.mp4", "blue.mp4"):  # each clip finds itself first, with the vector it was indexed under
        answer = search_json([index_dir, "--file", root / name, "--modality", "video", "-k", "1"], capsys)
        top = answer["results"]["video"][0]
        assert top["path"] == str(root / name) and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_long_video_is_indexed_in_segments_and_a_result_points_to_the_moment(tmp_path, capsys, search_checkpoint,
                                                                                fixture_bpe_dir):
    root = tmp_path / "films"
    root.mkdir()
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]  # one colour per second
    write_video(root / "film.mp4", [solid(colours[i // FPS]) for i in range(3 * FPS)])
    write_png(tmp_path / "green.png", colours[1], size=SIZE[::-1])
    index_dir = tmp_path / "index"
    summary = index(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                    "--segment-seconds", "1")
    assert summary["counts"] == {"video": 4} and summary["segments"] == 3  # the whole film + 3 windows
    spans = [(s, e) for _, s, e, _ in vectors_of(index_dir, root / "film.mp4")]
    assert spans == [(None, None), (0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    with sqlite3.connect(os.path.join(index_dir, "index.sqlite")) as db:
        (duration,), = db.execute("SELECT duration_s FROM files").fetchall()
    assert duration == pytest.approx(3.0, abs=0.2)
    out = search_json([index_dir, "--file", tmp_path / "green.png", "--modality", "video", "-k", "1"], capsys)
    top = out["results"]["video"][0]
    assert top["path"] == str(root / "film.mp4") and (top["start_s"], top["end_s"]) == (1.0, 2.0)


def test_a_sound_finds_the_video_that_contains_it(tmp_path, capsys, search_checkpoint, fixture_bpe_dir):
    from search_helpers import write_wav

    root = tmp_path / "files"
    root.mkdir()
    grey = [solid((120, 120, 120))] * (2 * FPS)
    write_video(root / "concert.mp4", grey, sound=chirp(2.0))
    write_video(root / "silent.mp4", grey)
    write_wav(root / "beep.wav", 1000.0, seconds=2.0)
    write_wav(root / "hum.wav", 120.0, seconds=2.0)
    query = tmp_path / "chirp.wav"
    import soundfile as sf

    sf.write(query, chirp(2.0), 16000)
    index_dir = tmp_path / "index"
    summary = index(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir)
    assert summary["counts"] == {"audio": 3, "video": 2}  # two sound files + the concert's sound track
    assert [m for m, *_ in vectors_of(index_dir, root / "concert.mp4")] == ["video", "audio"]
    assert [m for m, *_ in vectors_of(index_dir, root / "silent.mp4")] == ["video"]
    top = search_json([index_dir, "--file", query, "--modality", "audio", "-k", "3"], capsys)["results"]["audio"][0]
    assert top["path"] == str(root / "concert.mp4") and top["file_modality"] == "video"
    assert top["score"] > 0.9


def test_the_sound_track_of_a_long_video_is_indexed_in_windows(tmp_path, capsys, search_checkpoint,
                                                               fixture_bpe_dir):
    root = tmp_path / "files"
    root.mkdir()
    write_video(root / "talk.mp4", [solid((90, 90, 90))] * (3 * FPS), sound=chirp(3.0))
    index_dir = tmp_path / "index"
    summary = index(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                    "--segment-seconds", "1.5")
    assert summary["counts"] == {"audio": 2, "video": 3}
    audio = [(s, e) for m, s, e, _ in vectors_of(index_dir, root / "talk.mp4") if m == "audio"]
    assert [s for s, _ in audio] == [0.0, 1.5] and audio[-1][1] == pytest.approx(3.0, abs=0.1)


def test_the_api_points_to_the_moment_and_finds_a_video_by_its_sound(tmp_path, capsys, search_checkpoint,
                                                                     fixture_bpe_dir):
    import soundfile as sf
    from search_helpers import LiveServer
    from test_search import post_file, raw

    from one_peace.search.searcher import SearchIndex
    from one_peace.search.server import create_app

    root = tmp_path / "files"
    root.mkdir()
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
    write_video(root / "film.mp4", [solid(colours[i // FPS]) for i in range(3 * FPS)])
    write_video(root / "concert.mp4", [solid((120, 120, 120))] * (2 * FPS), sound=chirp(2.0))
    write_png(tmp_path / "green.png", colours[1], size=SIZE[::-1])
    sf.write(tmp_path / "chirp.wav", chirp(2.0), 16000)
    index_dir = tmp_path / "index"
    index(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
          "--segment-seconds", "1")
    with LiveServer(create_app(SearchIndex(str(index_dir)))) as server:
        status, data = post_file(server, tmp_path / "green.png", [("modalities", "video"), ("k", "1")])
        assert status == 200, data
        top = json.loads(data)["results"]["video"][0]
        assert top["path"] == str(root / "film.mp4") and (top["start_s"], top["end_s"]) == (1.0, 2.0)
        status, data = post_file(server, tmp_path / "chirp.wav", [("modalities", "audio"), ("k", "1")])
        top = json.loads(data)["results"]["audio"][0]
        assert status == 200 and top["path"] == str(root / "concert.mp4") and top["file_modality"] == "video"
        status, body = raw(server, "GET", top["url"])  # the hit plays the video file itself
        assert status == 200 and body == (root / "concert.mp4").read_bytes()
