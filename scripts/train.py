#!/usr/bin/env python
"""Train a Transformer: `python scripts/train.py --config configs/sample.yaml [section.key=value ...]`."""

from transformer.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
