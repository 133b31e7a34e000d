"""Audio and audio-language tasks: retrieval (AudioCaps, Clotho, ESC-50 zero-shot), FSD50K,
VGGSound (audio-only and audio-visual) and AVQA."""
