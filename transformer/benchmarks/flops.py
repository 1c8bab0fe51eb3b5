"""Achieved TFLOP/s and MFU of a training step on CUDA.

The FLOPs of a step are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward
pass of our model on each timed batch (matrix products and attention on the padded shapes; causal attention
is not halved; elementwise work, norms and softmax are not counted). Both models are credited the same FLOPs.
MFU is against ``--peak-tflops``, else the dense peak detected for A100/H100/H200.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from transformer.data.batching import Batch
from transformer.tokens import PAD_ID

# Dense peak TFLOP/s by (name fragment, precision); fp32 without TF32 (PyTorch's default for matmuls).
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


def training_flops(model: nn.Module, batch: Batch) -> float:
    """FLOPs of one forward and backward pass of ``model`` on ``batch``, counted by ``FlopCounterMode``.

    The loss is plain cross-entropy on the logits (any loss does the same products); the gradients it leaves
    are cleared. Counted: matrix products and attention; not counted: elementwise work, norms, softmax.
    """
    with FlopCounterMode(display=False) as counter:
        logits = model(batch.src, batch.tgt_in)
        F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID, reduction="sum").backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The accelerator's dense peak for ``precision`` (``override`` if given), and where it came from."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "not applicable on the CPU"
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision], f"detected from the device name {name!r} (dense {precision})"
    return None, f"unknown for {name!r}: pass --peak-tflops"
