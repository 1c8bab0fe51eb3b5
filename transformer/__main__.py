"""``python -m transformer``: the same as the ``transformer`` command."""

from transformer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
