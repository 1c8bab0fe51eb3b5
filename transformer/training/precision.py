"""Mixed precision: one autocast context chosen at start-up, a gradient scaler for fp16, the fused loss's dtype."""

from __future__ import annotations

import contextlib

import torch

from transformer.errors import ConfigError


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast of ``train.precision`` ("fp32": none) on ``device``.

    Raises:
        ConfigError: the precision is not available on ``device`` (fp16 off CUDA, bf16 on an old GPU).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs a CUDA device, but training runs on {device.type}; "
            "use train.precision=bf16 or train.precision=fp32 there"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16: {device} does not support bfloat16; use train.precision=fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that acts only for fp16 (bf16 has float32's range; disabled, it passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def loss_matmul_dtype(precision: str) -> torch.dtype | None:
    """The dtype of the fused loss's products: the autocast dtype (its softmax and sums stay float32); None: float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
