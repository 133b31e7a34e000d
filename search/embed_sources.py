"""Embedding the files ``one-peace-index`` found, batch by batch, each batch committed as it finishes.

* Texts: a ``.txt`` is one text, each row of a ``.tsv`` another (a TSV is one batch).
* Every other modality hands its file paths to its registry processor, as a query of the same file
  is embedded, after a look at the header (``media_info.py``): the date and duration recorded, and a
  picture or a video frame of more than ``--max-pixels`` refused before anything is decoded.
* **Long audio and video** (longer than one window, ``--segment-seconds``; audio windows are at most
  the checkpoint's ``max_duration``, all its audio branch hears of a clip): one vector per window with
  its span (``start_s``, ``end_s``; ``media_decode.segment_windows``).  A video also keeps its
  whole-file vector (frames spread over all of it); a sound does not (the audio branch would hear only
  its first window).  Past ``--max-duration`` the rest of the file is not decoded: it is indexed up
  to the cap, recorded in its ``reason`` and counted.
* **A video's sound track** is embedded with the audio branch (when the checkpoint has one) and stored as
  ``audio`` vectors of the video file (windows for a long one), so a sound finds the video.
* **Decoding ahead**: the headers and the decoding of batch k+1 run on a worker thread while the model
  embeds batch k (``decode_ahead.py``); vectors, failures and commits are those of one batch after another.
"""
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .decode_ahead import PreparedHub, planned_ahead, process_outcome
from .embed import embed, embed_inputs, failure_reason
from .media_decode import audio_samples, frame_times, frames_at, segment_windows
from .media_info import DEFAULT_MAX_PIXELS, file_info, pixel_refusal
from .scan import TSV_EXTENSION, Source, read_text_file, read_tsv_texts, view_of

logger = logging.getLogger("one_peace.search")
TEXT_KEPT = 2000  # characters of an embedded text kept for display
DEFAULT_MAX_DURATION = 1800.0  # seconds of a sound or video decoded and embedded (30 minutes)
DEFAULT_SEGMENT_SECONDS = 15.0  # the released checkpoint's audio window (task max_duration)
MAX_PIXELS_REASON = "pixels is over --max-pixels"  # in the reason of a refused file
MAX_DURATION_REASON = "(--max-duration)"  # in the reason of a truncated file


@dataclass
class MediaOptions:
    """What ``--max-pixels``, ``--max-duration``, ``--segment-seconds`` and ``--exclude`` set (recorded
    in the index as ``media_options``)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_duration: float = DEFAULT_MAX_DURATION
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    exclude: tuple = ()

    def to_dict(self) -> Dict:
        return dict(asdict(self), exclude=list(self.exclude))

    @classmethod
    def from_dict(cls, d) -> "MediaOptions":
        d = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        return cls(**dict(d, exclude=tuple(d.get("exclude") or ())))


@contextlib.contextmanager
def pil_pixel_limit(max_pixels: int):
    """PIL refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` itself: raised to the cap while
    embedding, so that a picture ``--max-pixels`` admits is decoded (restored afterwards)."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(before or 0, int(max_pixels)) if before is not None else None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _chunks(items, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def embed_sources(hub, modality: str, sources: List[Source], batch_size: int, tsv_column: Optional[str],
                  limits: MediaOptions, commit: Callable, embed_fn: Callable = embed) -> None:
    """Embed ``sources`` of one modality; ``commit(entries)`` after each batch.  An entry is ``(source,
    status, reason, vectors, file_info)`` (``store.IndexStore.commit_batch``); ``file_info["limit"]`` names
    the limit that refused (``max_pixels``) or cut (``max_duration``) the file.  ``embed_fn``: the
    embedding of a batch of items (``embed.embed``)."""
    if modality == "text":
        _embed_texts(hub, sources, batch_size, tsv_column, commit, embed_fn)
    else:
        _embed_media(hub, modality, sources, batch_size, limits, commit, embed_fn)


def _embed_media(hub, modality, sources, batch_size, limits, commit, embed_fn):
    view = view_of(modality)
    track = modality == "video" and "audio" in hub.model.modalities
    window = _window(hub, modality, limits)

    def plan(chunk):
        """On the decoding worker: the headers of a batch's files, what each file gets, and the decoded
        ``net_input`` of the files embedded whole (``decode_ahead.py``)."""
        rows, whole = [], []
        for source in chunk:
            info = file_info(source.path, view)
            stored = {"taken_at": info.get("taken_at"), "duration_s": info.get("duration_s")}
            refusal = pixel_refusal(info, limits.max_pixels, "a picture" if view == "image" else "a frame")
            if refusal:
                rows.append(("entry", (source, "failed", refusal, [], dict(stored, limit="max_pixels"))))
            elif modality in ("audio", "video") and (info.get("duration_s") or 0) > window:
                rows.append(("long", (source, info, stored)))
            else:
                whole.append((source, stored, info))
        return rows, whole, process_outcome(hub, modality, [s.path for s, _, _ in whole])

    for _, (rows, whole, outcome) in planned_ahead(list(_chunks(sources, batch_size)), plan):
        entries = []
        for kind, row in rows:  # refused and long files, in file order (long ones embedded here, by segment)
            if kind == "entry":
                entries.append(row)
            else:
                entries.append(_embed_long(hub, row[0], modality, row[1], row[2], limits, batch_size, track))
        if whole:
            paths = [s.path for s, _, _ in whole]
            vectors, good, failed = embed_fn(PreparedHub(hub, modality, paths, outcome), modality, paths)
            ok = {i: [(None, None, vectors[j])] for j, i in enumerate(good)}
            notes = {}
            if track:
                _add_short_tracks(hub, whole, ok, notes, embed_fn, limits, batch_size)
            entries += [(whole[i][0], "ok", notes.get(i), ok[i], whole[i][1]) for i in sorted(ok)]
            entries += [(whole[i][0], "failed", reason, [], whole[i][1]) for i, reason in failed]
        commit(entries)


def _window(hub, modality: str, limits: MediaOptions) -> float:
    """Seconds of one segment: ``--segment-seconds``, for audio at most what the branch hears of a clip."""
    if modality == "audio":
        return min(limits.segment_seconds, float(hub.max_duration))
    return limits.segment_seconds


def _add_short_tracks(hub, whole, ok, notes, embed_fn, limits, batch_size):
    """The sound tracks of the videos embedded whole: one ``audio`` vector each, or windows for a track
    longer than the audio window (a video window may be longer than what the audio branch hears)."""
    window = _window(hub, "audio", limits)
    with_sound = [i for i in sorted(ok) if whole[i][2].get("has_audio")]
    longer = [i for i in with_sound if (whole[i][2].get("duration_s") or 0) > window]
    for i in longer:
        try:
            ok[i] += _audio_segments(hub, whole[i][0].path, whole[i][2]["duration_s"], limits, batch_size, True)
        except Exception as exc:  # noqa: BLE001 - the video stays indexed; the reason is recorded
            notes[i] = f"sound track not indexed: {failure_reason(exc)}"
    with_sound = [i for i in with_sound if i not in longer]
    if not with_sound:
        return
    vectors, good, failed = embed_fn(hub, "audio", [whole[i][0].path for i in with_sound])
    for j, k in enumerate(good):
        ok[with_sound[k]].append((None, None, vectors[j], "audio", None, None))
    for k, reason in failed:
        notes[with_sound[k]] = f"sound track not indexed: {reason}"


def _embed_long(hub, source: Source, modality: str, info: Dict, stored: Dict, limits: MediaOptions,
                batch_size: int, track: bool):
    """The entry of a file longer than one window: its segments (and, for a video, its whole-file vector
    and sound track), up to ``--max-duration``."""
    duration = float(info["duration_s"])
    covered = min(duration, limits.max_duration)
    notes = []
    if duration > limits.max_duration:
        notes.append(f"indexed the first {limits.max_duration:g} s of {duration:.1f} s {MAX_DURATION_REASON}")
        stored = dict(stored, limit="max_duration")
    try:
        if modality == "audio":
            vectors = _audio_segments(hub, source.path, covered, limits, batch_size, ffmpeg_only=False)
        else:
            pictures = min(covered, info.get("video_s") or covered)  # a sound track may outlast the pictures
            vectors = _video_segments(hub, source.path, pictures, limits, batch_size)
            if track and info.get("has_audio"):
                try:
                    vectors += _audio_segments(hub, source.path, covered, limits, batch_size, ffmpeg_only=True)
                except (ValueError, RuntimeError) as exc:
                    notes.append(f"sound track not indexed: {failure_reason(exc)}")
    except Exception as exc:  # noqa: BLE001 - any decoder error: recorded with its reason, never fatal
        return (source, "failed", failure_reason(exc), [], stored)
    return (source, "ok", "; ".join(notes) or None, vectors, stored)


def _video_segments(hub, path: str, covered: float, limits: MediaOptions, batch_size: int) -> List:
    from ..data_utils.video import video_to_tensor

    num_frames = hub.model.encoder_wrapper.adapter("video").num_frames
    windows = segment_windows(covered, limits.segment_seconds) if covered > limits.segment_seconds else []
    spans = [(None, None)] + windows
    times = [frame_times(0.0 if s is None else s, covered if e is None else e, num_frames) for s, e in spans]
    frames = frames_at(path, [t for clip in times for t in clip])
    clips, kept = [], []
    for k, span in enumerate(spans):
        part = frames[k * num_frames:(k + 1) * num_frames]
        if any(f is None for f in part):
            if span[0] is None:
                raise ValueError(f"video {path} is truncated: no frame at {times[0][-1]:.1f} s of {covered:.1f} s")
            continue  # a window past the frames there are
        clips.append(part)
        kept.append(span)
    out = []
    for start in range(0, len(clips), batch_size):
        batch = torch.stack([video_to_tensor(c, hub.patch_image_size) for c in clips[start:start + batch_size]])
        vectors, finite = embed_inputs(hub, "video", {"src_videos": batch.to(hub.device, hub.dtype)})
        for vector, ok, (s, e) in zip(vectors, finite, kept[start:start + batch_size]):
            if not ok:
                raise ValueError("non-finite embedding")
            out.append((None, None, vector) if s is None else (None, None, vector, "video", s, e))
    return out


def _audio_segments(hub, path: str, covered: float, limits: MediaOptions, batch_size: int,
                    ffmpeg_only: bool) -> List:
    from ..data_utils.audio import SAMPLE_RATE

    wav = audio_samples(path, covered, ffmpeg_only=ffmpeg_only)
    spans = segment_windows(len(wav) / SAMPLE_RATE, _window(hub, "audio", limits))
    out = []
    for start in range(0, len(spans), batch_size):
        part = spans[start:start + batch_size]
        waves = [wav[int(round(s * SAMPLE_RATE)):int(round(e * SAMPLE_RATE))] for s, e in part]
        vectors, finite = embed_inputs(hub, "audio", audio_input(hub, waves, path))
        for vector, ok, (s, e) in zip(vectors, finite, part):
            if not ok:
                raise ValueError("non-finite embedding")
            out.append((None, None, vector, "audio", float(s), float(e)))
    return out


def audio_input(hub, waves: List[np.ndarray], name: str) -> Dict[str, torch.Tensor]:
    """``net_input`` of mono 16 kHz waveforms, prepared as the hub's audio processor prepares a file's."""
    from ..data_utils.audio import audio_padding_mask, prepare_waveform
    from ..data_utils.collate import collate_audios

    adapter = hub.model.encoder_wrapper.adapter("audio")
    prepared = [prepare_waveform(w, max_duration=hub.max_duration) for w in waves]
    masks = [audio_padding_mask(adapter.num_frames(w.numel(), name=name)) for w in prepared]
    src_audios, padding_masks = collate_audios(prepared, masks)
    return {"src_audios": src_audios.to(hub.device, hub.dtype), "audio_padding_masks": padding_masks.to(hub.device)}


def _embed_texts(hub, sources, batch_size, tsv_column, commit, embed_fn):
    plain = [s for s in sources if not s.path.lower().endswith(TSV_EXTENSION)]
    for chunk in _chunks(plain, batch_size):
        entries, texts, owners = [], [], []
        for source in chunk:
            try:
                texts.append(read_text_file(source.path))
                owners.append(source)
            except (OSError, ValueError) as exc:
                entries.append((source, "failed", f"{type(exc).__name__}: {exc}", []))
        if texts:
            vectors, good, failed = embed_fn(hub, "text", texts)
            entries += [(owners[i], "ok", None, [(None, texts[i][:TEXT_KEPT], vectors[j])]) for j, i in enumerate(good)]
            entries += [(owners[i], "failed", reason, []) for i, reason in failed]
        commit(entries)
    for source in (s for s in sources if s.path.lower().endswith(TSV_EXTENSION)):
        try:
            rows = read_tsv_texts(source.path, tsv_column)
        except (OSError, ValueError) as exc:
            commit([(source, "failed", f"{type(exc).__name__}: {exc}", [])])
            continue
        kept, bad = [], []
        for chunk in _chunks(rows, batch_size):
            vectors, good, failed = embed_fn(hub, "text", [text for _, text in chunk])
            kept += [(chunk[i][0], chunk[i][1][:TEXT_KEPT], vectors[j]) for j, i in enumerate(good)]
            bad += [f"line {chunk[i][0]}: {reason}" for i, reason in failed]
        for reason in bad:
            logger.warning("%s, %s", source.path, reason)
        reason = f"{len(bad)} of {len(rows)} rows failed (first: {bad[0]})" if bad else None
        commit([(source, "ok" if kept else "failed", reason, kept)])
