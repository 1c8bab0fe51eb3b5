"""Speed benchmarks, run as ``transformer benchmark MODE`` (see ``transformer.cli.benchmark``).

- ``compare``: training, peak memory and decoding against a stock ``torch.nn.Transformer`` (``stock.py``).
- ``ablate``: the training update with each speed-only code path switched on and off, in one process.
- ``decode``: our greedy and beam search with and without the KV cache.
- ``data``: the data pipeline (SentencePiece training, encoding, batching).
- ``engines``: our decoder against CTranslate2 (float32 and int8) on one split: speed, BLEU, agreement.

Nothing here is imported by the library.
"""
