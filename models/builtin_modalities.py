"""The built-in modalities: the official text, image and audio, and video (``docs/VIDEO.md``).

Imported by ``one_peace.models`` so the registry is full before anything reads it; a new modality
registers the same way from its own module (``docs/ARCHITECTURE.md``, "Adding a modality").
"""
from ..data_utils.processors import process_audio, process_image, process_text
from .adapters.audio import AudioAdapter, AudioAdapterConfig
from .adapters.image import ImageAdapter, ImageAdapterConfig
from .adapters.text import TextAdapter, TextAdapterConfig
from .adapters.video import VideoAdapter, VideoAdapterConfig
from .modalities import Modality, register_modality
from .video import init_video_from_image, process_video

# Images: what Pillow reads; audio: what libsndfile reads (data_utils/audio.py, FFmpeg for the rest);
# text: plain files and TSVs of captions (one item per row).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg")
TEXT_EXTENSIONS = (".txt", ".tsv")

TINY_AUDIO_SPEC = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]"


def _vision_presets():
    """Image and video adapters: encoder patch geometry per size; the decoder has no patch embedding."""
    def sizes(bucket):
        return {"encoder": dict(bucket_size=bucket, rel_bucket_size=bucket, vision_encoder_type="hmlp",
                                use_attn_bias=True),
                "decoder": dict(bucket_size=bucket, vision_encoder_type="none", use_attn_bias=False)}
    return {"tiny": sizes(2), "base": sizes(16), "4b": sizes(16)}


_TEXT_RELEASE = {"encoder": dict(bucket_size=256, use_attn_bias=True), "decoder": dict(use_attn_bias=False)}
TEXT_PRESETS = {"tiny": {"encoder": dict(bucket_size=8, use_attn_bias=True), "decoder": dict(use_attn_bias=False)},
                "base": _TEXT_RELEASE, "4b": _TEXT_RELEASE}
_AUDIO_DECODER = dict(feature_encoder_spec=None, abs_pos_type="fixed", use_attn_bias=False)
_AUDIO_RELEASE = {"encoder": dict(bucket_size=512, use_attn_bias=True, conv_pos_depth=5, conv_pos_width=95,
                                  conv_pos_groups=16), "decoder": _AUDIO_DECODER}
AUDIO_PRESETS = {"tiny": {"encoder": dict(feature_embed_dim=32, feature_encoder_spec=TINY_AUDIO_SPEC, bucket_size=32,
                                          use_attn_bias=True, conv_pos_depth=2, conv_pos_width=19, conv_pos_groups=4),
                          "decoder": _AUDIO_DECODER},
                 "base": _AUDIO_RELEASE, "4b": _AUDIO_RELEASE}

register_modality(Modality("text", TextAdapter, TextAdapterConfig, ("src_tokens", "token_embeddings"),
                           processor=process_text, official=True, extensions=TEXT_EXTENSIONS, search_view="text",
                           presets=TEXT_PRESETS))
register_modality(Modality("image", ImageAdapter, ImageAdapterConfig,
                           ("src_images", "is_second_image", "image_patches"),
                           fused_type="vl", processor=process_image, official=True, extensions=IMAGE_EXTENSIONS,
                           search_view="image", presets=_vision_presets()))
register_modality(Modality("audio", AudioAdapter, AudioAdapterConfig,
                           ("src_audios", "audio_padding_masks", "audio_frames"), fused_type="al",
                           processor=process_audio, official=True, extensions=AUDIO_EXTENSIONS, search_view="audio",
                           presets=AUDIO_PRESETS))
# Not official (docs/VIDEO.md): off unless use_video_moe; starts from the image branch.
register_modality(Modality("video", VideoAdapter, VideoAdapterConfig, ("src_videos",), fused_type="vt",
                           processor=process_video, upgrade=init_video_from_image, extensions=VIDEO_EXTENSIONS,
                           search_view="video", presets=_vision_presets()))
