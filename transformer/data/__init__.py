"""Parallel text in, padded token-budget batches out: corpus readers, the vocabulary, batching."""

from transformer.data.batching import Batch, BatchIterator, ParallelDataset
from transformer.data.corpus import load_split
from transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Batch", "BatchIterator", "ParallelDataset", "Tokenizer", "load_split"]
