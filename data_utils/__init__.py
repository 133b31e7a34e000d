"""Data preprocessing for ONE-PEACE (plain Python/torch/numpy/PIL/soundfile/scipy; no fairseq).

Modules: ``text`` (caption cleaning), ``dictionary`` / ``bpe`` / ``bpe_files`` (tokenisation and
BPE file management), ``image``, ``audio``, ``collate``, ``masking`` (pretraining masks), ``tsv``.
Nothing is imported here so ``python -m one_peace.data_utils.bpe`` and light imports stay cheap.
"""
