"""Base of the audio benchmark datasets: one audio clip per TSV row (the row parsing -- label,
caption, candidates -- lives with each benchmark's task).

Clips are read as 16 kHz mono (other rates are resampled), normalised over the whole
clip, cut to the first ``max_duration`` seconds and tiled to at least 1 s (spec 5.3).
"""
from typing import Dict, List

import torch

from .audio import audio_padding_mask, conv_output_frames, load_audio, prepare_waveform
from .collate import collate_audios
from .dataset import TSVDataset


class AudioRowDataset(TSVDataset):
    def __init__(self, split, reader, feature_spec, max_duration=15, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.feature_spec = feature_spec
        self.max_duration = max_duration

    def load_clip(self, value: str):
        """(waveform (N,), padding mask (T + 1,)) of the clip named in a TSV cell."""
        path = self.reader.resolve(value)
        wav = prepare_waveform(load_audio(path), max_duration=self.max_duration)
        # Raises (naming the file) when the clip yields no frame at all.
        frames = conv_output_frames(wav.numel(), self.feature_spec, name=path)
        return wav, audio_padding_mask(frames)

    def audio_item(self, row: Dict[str, str]) -> Dict:
        wav, mask = self.load_clip(self.field(row, "audio"))
        return {"uniq_id": row.get("uniq_id", ""), "source_audio": wav, "audio_padding_mask": mask}

    @staticmethod
    def collate_clips(samples: List[Dict], repeat: int = 1) -> Dict[str, torch.Tensor]:
        src_audios, masks = collate_audios([s["source_audio"] for s in samples],
                                           [s["audio_padding_mask"] for s in samples])
        if repeat > 1:  # one copy per answer candidate (AQA), sample-major
            src_audios = src_audios.repeat_interleave(repeat, dim=0)
            masks = masks.repeat_interleave(repeat, dim=0)
        return {"src_audios": src_audios, "audio_padding_masks": masks}

    def collate(self, samples):
        batch = {"net_input": self.collate_clips(samples), "uniq_ids": [s["uniq_id"] for s in samples]}
        if "target" in samples[0]:
            batch["target"] = torch.stack([torch.as_tensor(s["target"]) for s in samples])
        return batch

