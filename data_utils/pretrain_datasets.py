"""Pretraining datasets: image-text (stage 1) and audio-text (stage 2) pairs with their masks.

Every sample carries the unmasked inputs plus, per masked view, ``*_mask_indices``
(True = masked, CLS slot first) and ``*_preserve_ids`` (kept positions incl. CLS).
Masks are drawn from a generator seeded by (seed, epoch, index), so a resumed run
sees exactly the masks an uninterrupted run would.
"""
import numpy as np
import torch

from . import masking
from .audio import audio_padding_mask, conv_output_frames, load_audio, prepare_waveform
from .collate import collate_audios, collate_bool, collate_ids, collate_tokens
from .dataset import TSVDataset
from .image import ImageTransform, load_image


class _PairDataset(TSVDataset):
    def __init__(self, split, reader, tokenizer, seed=1, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.tokenizer = tokenizer
        self.seed = seed
        self.epoch = 1

    def rng(self, index):
        return np.random.default_rng([self.seed, self.epoch, index])

    def encode_caption(self, caption):
        return self.tokenizer.encode(caption, clean=True)

    def whole_word_mask(self, tokens, ratio, rng):
        return masking.text_whole_word_mask(tokens, self.tokenizer.word_starts, ratio, rng)

    @staticmethod
    def add_view(item, name, mask):
        item[f"{name}_mask_indices"] = torch.as_tensor(mask, dtype=torch.bool)
        item[f"{name}_preserve_ids"] = masking.preserve_ids_from_mask(mask)

    @staticmethod
    def collate_views(samples, names):
        out = {}
        for name in names:
            out[f"{name}_mask_indices"] = collate_bool([s[f"{name}_mask_indices"] for s in samples])
            out[f"{name}_preserve_ids"] = collate_ids([s[f"{name}_preserve_ids"] for s in samples])
        return out


class ImageTextPretrainDataset(_PairDataset):
    VIEWS = ("text", "image", "vl_text", "vl_image")

    def __init__(self, split, reader, tokenizer, patch_image_size=256, min_scale=0.9, text_mask_ratio=0.15,
                 image_mask_ratio=0.75, vl_text_mask_ratio=0.4, vl_image_mask_ratio=0.6875, **kwargs):
        super().__init__(split, reader, tokenizer, **kwargs)
        self.transform = ImageTransform(patch_image_size, train=(split == "train"), min_scale=min_scale)
        self.num_patches = (patch_image_size // 16) ** 2
        self.ratios = (text_mask_ratio, image_mask_ratio, vl_text_mask_ratio, vl_image_mask_ratio)

    def load_item(self, index, row):
        rng = self.rng(index)
        tokens = self.encode_caption(row["caption"])
        image = self.transform(load_image(self.resolve(row["image"]), self.exif_transpose), rng=rng)
        text_ratio, image_ratio, vl_text_ratio, vl_image_ratio = self.ratios
        text_mask = self.whole_word_mask(tokens, text_ratio, rng)
        image_mask = masking.image_random_mask(self.num_patches, image_ratio, rng)
        item = {"source_text": tokens, "source_image": image}
        self.add_view(item, "text", text_mask)
        self.add_view(item, "image", image_mask)
        # The joint view prefers tokens the text-only view kept, and image patches it hid.
        self.add_view(item, "vl_text", masking.text_token_mask(len(tokens), vl_text_ratio, rng, avoid=text_mask))
        self.add_view(item, "vl_image", masking.image_complementary_mask(image_mask, vl_image_ratio, rng))
        return item

    def collate(self, samples):
        net_input = {
            "src_tokens": collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad),
            "src_images": torch.stack([s["source_image"] for s in samples]),
        }
        net_input.update(self.collate_views(samples, self.VIEWS))
        return {"net_input": net_input, "nsentences": len(samples)}


class AudioTextPretrainDataset(_PairDataset):
    VIEWS = ("audio", "al_text", "al_audio")

    def __init__(self, split, reader, tokenizer, feature_spec, max_duration=15, audio_mask_ratio=0.55,
                 al_text_mask_ratio=0.4, al_audio_mask_ratio=0.45, audio_mask_prob_adjust=0.1,
                 audio_mask_length=5, **kwargs):
        super().__init__(split, reader, tokenizer, **kwargs)
        self.feature_spec = feature_spec
        self.max_duration = max_duration
        self.ratios = (audio_mask_ratio, al_text_mask_ratio, al_audio_mask_ratio)
        self.mask_prob_adjust = audio_mask_prob_adjust
        self.mask_length = audio_mask_length

    def load_item(self, index, row):
        rng = self.rng(index)
        tokens = self.encode_caption(row["text"])
        path = self.resolve(row["audio"])
        wav = prepare_waveform(load_audio(path), max_duration=self.max_duration)
        frames = conv_output_frames(wav.numel(), self.feature_spec, name=path)
        audio_ratio, al_text_ratio, al_audio_ratio = self.ratios
        item = {"source_text": tokens, "source_audio": wav, "audio_padding_mask": audio_padding_mask(frames)}
        self.add_view(item, "audio", masking.compute_block_mask_1d(
            frames, audio_ratio, self.mask_length, self.mask_prob_adjust, rng))
        self.add_view(item, "al_text", self.whole_word_mask(tokens, al_text_ratio, rng))
        self.add_view(item, "al_audio", masking.compute_block_mask_1d(
            frames, al_audio_ratio, self.mask_length, self.mask_prob_adjust, rng))
        return item

    def collate(self, samples):
        src_audios, padding_masks = collate_audios([s["source_audio"] for s in samples],
                                                   [s["audio_padding_mask"] for s in samples])
        net_input = {
            "src_tokens": collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad),
            "src_audios": src_audios,
            "audio_padding_masks": padding_masks,
        }
        net_input.update(self.collate_views(samples, self.VIEWS))
        return {"net_input": net_input, "nsentences": len(samples)}
