"""Speed benchmarks, run as ``transformer benchmark MODE`` (see ``transformer.cli.benchmark``), the one entry.

The modes, one module each (``add_arguments(parser)`` and ``run(args)``):

- ``compare``: training, peak memory and decoding against a stock ``torch.nn.Transformer`` (``stock.py``);
  its decoding half is ``compare_decode.py``.
- ``ablate`` (``ablation.py``): the training update with each speed-only code path switched on and off, in one process.
- ``decode``: our greedy and beam search with and without the KV cache.
- ``data``: the data pipeline (SentencePiece training, encoding, batching).
- ``scale``: preparation, start-up and memory on corpora of 0.1M to 4.5M pairs.
- ``engines``: our decoder against CTranslate2 (float32 and int8) on one split: speed, BLEU, agreement.

What they share: ``common.py`` (machine info, timing, the untrained model, argument checks), ``train_batches.py``
(the training batches: Multi30k or synthetic), ``steps.py`` (the training updates timed, ours and stock, and
their interleaved rounds), ``memory.py`` (peak memory in a subprocess), ``flops.py`` (FLOP count and MFU).

Nothing here is imported by the library.
"""
