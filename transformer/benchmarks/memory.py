"""Peak training memory of one step, each measured in a fresh process (peak RSS is process-wide).

On the CPU: peak RSS (VmHWM of /proc/self/status on Linux, else ``getrusage``) and the peak before the model
is built, mostly torch itself; on CUDA: ``torch.cuda.max_memory_allocated`` (and the peak RSS).

The parent saves the step's name, model config, settings and batches to a file and runs
``transformer benchmark MODE --memory-probe FILE``; that child builds the step with the mode's own builder,
trains it on the batches and prints its peak as the last line of its output, in JSON.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from transformer.benchmarks.steps import StepFn
from transformer.config import ModelConfig
from transformer.data.batching import Batch

# (step name, model config, precision, seed, device) -> that step, on a freshly built model
BuildStep = Callable[[str, ModelConfig, str, int, torch.device], StepFn]


def peak_rss_mib() -> float:
    """Peak resident memory of this process. Linux: VmHWM, since ru_maxrss also counts the parent's memory
    that a child held between fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def memory_in_subprocess(
    mode: str, name: str, config: ModelConfig, batches: list[Batch], *, precision: str, seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Peak memory of a fresh process that trains step ``name`` of benchmark ``mode`` on ``batches``, with this
    process's thread count: {"peak_mib", "rss_before_model_mib"} (CPU) or {"peak_mib", "peak_rss_mib"} (CUDA)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.pt"
        torch.save({"name": name, "config": dataclasses.asdict(config), "precision": precision, "seed": seed,
                    "device": str(device), "threads": torch.get_num_threads(),
                    "batches": [dataclasses.asdict(b) for b in batches]}, probe)
        command = [sys.executable, "-m", "transformer", "benchmark", mode, "--memory-probe", str(probe)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory probe of {name} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def memory_probe(path: Path, build_step: BuildStep) -> int:
    """The child process: build the step that ``path`` names, train it on the batches, print its peak memory."""
    spec = torch.load(path, weights_only=False)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    batches = [Batch(**b) for b in spec["batches"]]
    before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = build_step(spec["name"], ModelConfig(**spec["config"]), spec["precision"], spec["seed"], device)
    for batch in batches:
        step(batch).item()
    result = {"peak_mib": peak_rss_mib(), "rss_before_model_mib": before}
    if device.type == "cuda":
        result = {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20, "peak_rss_mib": result["peak_mib"]}
    print(json.dumps(result))
    return 0
