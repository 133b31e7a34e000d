"""The built-in modalities: the official text, image and audio, and video (``docs/VIDEO.md``).

Imported by ``one_peace.models`` so the registry is full before anything reads it; a new modality
registers the same way from its own module (``docs/ARCHITECTURE.md``, "Adding a modality").
"""
from ..data_utils.processors import process_audio, process_image, process_text
from .adapters.audio import AudioAdapter
from .adapters.image import ImageAdapter
from .adapters.text import TextAdapter
from .adapters.video import VideoAdapter
from .config import AudioAdapterConfig, ImageAdapterConfig, TextAdapterConfig, VideoAdapterConfig
from .modalities import Modality, register_modality
from .video import init_video_from_image, process_video

# Images: what Pillow reads; audio: what libsndfile reads (data_utils/audio.py, FFmpeg for the rest);
# text: plain files and TSVs of captions (one item per row).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg")
TEXT_EXTENSIONS = (".txt", ".tsv")

register_modality(Modality("text", TextAdapter, TextAdapterConfig, ("src_tokens",), processor=process_text,
                           official=True, extensions=TEXT_EXTENSIONS, search_view="text"))
register_modality(Modality("image", ImageAdapter, ImageAdapterConfig, ("src_images", "is_second_image"),
                           fused_type="vl", processor=process_image, official=True, extensions=IMAGE_EXTENSIONS,
                           search_view="image"))
register_modality(Modality("audio", AudioAdapter, AudioAdapterConfig,
                           ("src_audios", "audio_padding_masks", "audio_frames"), fused_type="al",
                           processor=process_audio, official=True, extensions=AUDIO_EXTENSIONS, search_view="audio"))
# Not official (docs/VIDEO.md): off unless use_video_moe; starts from the image branch.
register_modality(Modality("video", VideoAdapter, VideoAdapterConfig, ("src_videos",), fused_type="vt",
                           processor=process_video, upgrade=init_video_from_image, extensions=VIDEO_EXTENSIONS,
                           search_view="video"))
