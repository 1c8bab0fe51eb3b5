"""Speed benchmarks on Multi30k: against a stock nn.Transformer, the ablation of the speed-only code, decoding, data.

examples:
  transformer benchmark compare --presets small --no-decode --steps 20 --repeats 5 --json train.json
  transformer benchmark compare --presets small --no-train --json decode.json
  transformer benchmark compare --device cuda --precision bf16 --presets base --max-tokens 32768 --json bench.json
  transformer benchmark ablate --steps 3 --rounds 10 --json ablation.json
  transformer benchmark decode --checkpoint runs/multi30k_en_de/checkpoints/best.pt
  transformer benchmark data
  transformer benchmark scale --sizes 100000 1000000 4500000 --json scale.json
  transformer benchmark engines --checkpoint runs/multi30k_en_de/checkpoints/avg10.pt --json engines.json
  transformer benchmark serve --checkpoint best.pt --model ct2 --soak-seconds 120 --json serve.json
  transformer benchmark MODE --help      the options of one mode

The corpus folder is the data config's default ($MULTI30K_DIR, else data/multi30k) unless --data-dir is given.
The figures of these commands are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse

from transformer.benchmarks import ablation, compare, data, decode, engines, scale, serve

MODES = (
    ("compare", compare, "training, memory and decoding against a stock torch.nn.Transformer"),
    ("ablate", ablation, "the training update with each speed-only code path on and off"),
    ("decode", decode, "decoding speed with and without the KV cache"),
    ("data", data, "data pipeline speed"),
    ("scale", scale, "prepare time, start-up time and memory on corpora of 0.1M to 4.5M pairs"),
    ("engines", engines, "our decoder against CTranslate2 (float32, int8): speed and BLEU"),
    ("serve", serve, "`transformer serve` under load: throughput and latency, batching on and off, against offline"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark", help="speed benchmarks (compare, ablate, decode, data, engines, scale, serve)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    for name, module, help_text in MODES:
        mode = modes.add_parser(name, help=help_text, description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(mode)
        mode.set_defaults(benchmark=module.run, run=run)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    return args.benchmark(args)
