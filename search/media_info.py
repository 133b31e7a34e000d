"""What the index records about a file besides its vectors, read from headers before anything is decoded:
when it was taken, how long it lasts, how many pixels a picture or frame has.

* **Date** (``files.taken_at``, seconds since the epoch): a photo's EXIF ``DateTimeOriginal`` (the Exif IFD,
  tag 36867) with its ``OffsetTimeOriginal`` (36881) when the camera wrote one, else read as local time
  (EXIF dates carry no zone); a video's container date (QuickTime's ``com.apple.quicktime.creationdate``,
  which has the zone, else ``creation_time``, UTC); anything else, or a date that is missing, unset (the
  1904/1970 zero dates encoders write) or unreadable: ``None``, which the store records as the mtime.
* **Duration** (``files.duration_s``): audio from libsndfile's header (frames / rate), else PyAV's; video
  from the container (PyAV).
* **Pixels**: width x height from the image header (PIL opens lazily) or the video stream's header.

Nothing here raises for a file it cannot read: the decoder that embeds it reports that with its reason.
"""
import datetime
import re
import warnings
from typing import Dict, Optional

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 36867
OFFSET_TIME_ORIGINAL = 36881
# PIL's own threshold (Image.MAX_IMAGE_PIXELS: 1 GiB of 4-byte pixels / 3): about 89.5 megapixels.
DEFAULT_MAX_PIXELS = 89_478_485
_EARLIEST = 86400.0  # container dates at or before 1970-01-02 are encoders' "unset" (0 or 1904)


def parse_exif_date(value, offset=None) -> Optional[float]:
    """``"YYYY:MM:DD HH:MM:SS"`` (+ ``"+HH:MM"``) -> epoch seconds; naive dates as local time; None if unset."""
    if not isinstance(value, str):
        return None
    match = re.match(r"\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})", value)
    if not match:
        return None
    try:
        when = datetime.datetime(*(int(g) for g in match.groups()))
    except ValueError:  # "0000:00:00 00:00:00" (unset) or an impossible date
        return None
    if isinstance(offset, str):
        zone = re.match(r"\s*([+-])(\d{2}):?(\d{2})", offset)
        if zone:
            delta = datetime.timedelta(hours=int(zone.group(2)), minutes=int(zone.group(3)))
            when = when.replace(tzinfo=datetime.timezone(delta if zone.group(1) == "+" else -delta))
    return when.timestamp()  # a naive datetime is taken as local time


def parse_container_date(value) -> Optional[float]:
    """An ISO 8601 container date (``2024-05-01T12:00:00.000000Z``, ``...+0200``) -> epoch seconds (UTC
    when it names no zone), None when unset or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)  # +0200 -> +02:00
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    stamp = when.timestamp()
    return stamp if stamp > _EARLIEST else None


def _pixels_from_bomb_error(message: str) -> Optional[int]:
    found = re.search(r"\((\d+) pixels\)", message)
    return int(found.group(1)) if found else None


def image_info(path: str) -> Dict:
    """``{"taken_at", "width", "height", "pixels"}`` of a picture from its header (values None if unknown)."""
    from PIL import Image

    out = {"taken_at": None, "width": None, "height": None, "pixels": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:  # reads the header only
                out["width"], out["height"] = img.size
                out["pixels"] = img.size[0] * img.size[1]
                out["taken_at"] = _exif_date(img)
        except Image.DecompressionBombError as exc:  # past twice PIL's limit: the size is in the message
            out["pixels"] = _pixels_from_bomb_error(str(exc))
        except Exception:  # noqa: BLE001 - unreadable header: the decoder reports it when embedding
            pass
    return out


def _exif_date(img) -> Optional[float]:
    try:
        exif = img.getexif().get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is no date
        return None
    return parse_exif_date(exif.get(DATE_TIME_ORIGINAL), exif.get(OFFSET_TIME_ORIGINAL))


def av_info(path: str) -> Dict:
    """``{"taken_at", "duration_s", "width", "height", "pixels", "has_audio", "has_video"}`` of a file FFmpeg
    reads (None / False where unknown or unreadable), and ``video_s``, the end of its pictures, when the
    video stream tells it."""
    out = {"taken_at": None, "duration_s": None, "width": None, "height": None, "pixels": None,
           "has_audio": False, "has_video": False}
    try:
        import av

        with av.open(path, metadata_errors="replace") as container:
            meta = dict(container.metadata)
            out["has_audio"] = bool(container.streams.audio)
            out["has_video"] = bool(container.streams.video)
            streams = list(container.streams.video) + list(container.streams.audio)
            for stream in streams:
                for key, value in stream.metadata.items():
                    meta.setdefault(key, value)
            out["taken_at"] = (parse_container_date(meta.get("com.apple.quicktime.creationdate"))
                               or parse_container_date(meta.get("creation_time")))
            out["duration_s"] = _duration(container, streams)
            if container.streams.video:
                stream = container.streams.video[0]
                ctx = stream.codec_context
                out["width"], out["height"] = ctx.width, ctx.height
                out["pixels"] = ctx.width * ctx.height
                if stream.duration and stream.time_base:  # the pictures may end before the sound
                    out["video_s"] = float((stream.duration + (stream.start_time or 0)) * stream.time_base)
    except Exception:  # noqa: BLE001 - PyAV's errors; the decoder reports them when embedding
        pass
    return out


def _duration(container, streams) -> Optional[float]:
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    ends = [float(s.duration * s.time_base) for s in streams if s.duration and s.time_base]
    return max(ends) if ends else None


def audio_info(path: str) -> Dict:
    """``{"taken_at", "duration_s"}`` of a sound file: libsndfile's header, else PyAV's."""
    import soundfile as sf

    try:
        info = sf.info(path)
        if info.samplerate > 0 and info.frames > 0:
            return {"taken_at": None, "duration_s": info.frames / info.samplerate}
    except Exception:  # noqa: BLE001 - not a libsndfile format (or unreadable): ask FFmpeg
        pass
    found = av_info(path)
    return {"taken_at": found["taken_at"], "duration_s": found["duration_s"]}


def file_info(path: str, view: str) -> Dict:
    """What :func:`image_info` / :func:`audio_info` / :func:`av_info` read for a file shown as ``view``
    (the modality's search view); other files: nothing (their date is their mtime)."""
    if view == "image":
        return image_info(path)
    if view == "audio":
        return audio_info(path)
    if view == "video":
        return av_info(path)
    return {}


def pixel_refusal(info: Dict, max_pixels: int, what: str) -> Optional[str]:
    """The failure reason when ``info`` reports more pixels than ``max_pixels`` (None when within or unknown)."""
    pixels = info.get("pixels")
    if pixels is None or pixels <= max_pixels:
        return None
    size = f"{info['width']}x{info['height']} = " if info.get("width") else ""
    return (f"{what} of {size}{pixels} pixels is over --max-pixels {max_pixels} (a guard against decompression "
            "bombs; raise --max-pixels to index it)")
