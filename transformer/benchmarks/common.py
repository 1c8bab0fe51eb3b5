"""What the benchmark modes share: the machine they ran on, timing, the untrained model, argument checks, the
direction measured."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from transformer.config import DataConfig, ModelConfig
from transformer.data.tokenizer import Tokenizer
from transformer.inference.direction import format_directions
from transformer.model.transformer import Transformer

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float, float]:
    """``fn()``, its wall seconds, and the share of its threads' time this process got over them (below about
    0.8 on the CPU: other processes took some)."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    return result, seconds, (time.process_time() - cpu_start) / seconds / torch.get_num_threads()


def below_minimum(values: dict[str, int], least: int) -> str | None:
    """The error message for the first option (name -> value) below ``least``, or None."""
    for name, value in values.items():
        if value < least:
            return f"{name} must be at least {least}, got {value}"
    return None


def measured_direction(data: DataConfig) -> tuple[tuple[str, str], str]:
    """The (source, target) direction a benchmark measures, and what its header adds to name it.

    A bilingual model: its one direction, nothing added. A multilingual model: its first direction
    (``data.directions[0]``), its sources led by that target's tag; the header adds
    ", the first direction of en-de, de-en".
    """
    pairs = data.direction_pairs
    return pairs[0], f", the first direction of {format_directions(pairs)}" if data.multilingual else ""


def model_config(preset: str, tokenizer: Tokenizer) -> ModelConfig:
    """The sizes of ``preset`` for ``tokenizer``'s vocabulary, with the tied output the stock baseline needs."""
    return ModelConfig.preset(preset, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                              share_embeddings=tokenizer.joint, tie_output=True)


def untrained_model(preset: str, tokenizer: Tokenizer, seed: int, device: torch.device) -> Transformer:
    """A randomly initialised model in eval mode: its outputs run to the maximum length (speed only)."""
    torch.manual_seed(seed)
    return Transformer(model_config(preset, tokenizer)).to(device).eval()


def json_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The command's options (``vars(args)``) as JSON values: paths as strings, the parser's callables left out."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if not callable(v)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, processor, threads, device, library versions and the git commit, for a JSON report."""
    import sacrebleu
    import sentencepiece

    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "numpy": np.__version__,
                         "sentencepiece": sentencepiece.__version__, "sacrebleu": sacrebleu.__version__}}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return info
