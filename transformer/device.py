"""Choosing the device: one function for training, inference, plotting and the command line."""

from __future__ import annotations

import torch

from transformer.errors import DeviceError


def resolve_device(name: str, *, local_rank: int = 0, key: str = "--device") -> torch.device:
    """"auto" picks this process's CUDA device when there is one, else the CPU.

    Args:
        name: "auto", "cpu", "cuda", "cuda:N" (or "mps" where PyTorch has it).
        local_rank: the CUDA device "auto" picks in a multi-process run.
        key: where the name came from, for the error message ("train.device", "--device").

    Raises:
        DeviceError: the name is not a device, or the device is not on this machine.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{key}={name} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{key}={name}: no MPS device on this machine; use {key}=cpu or {key}=auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{key}={name}: no CUDA device is available on this machine; use {key}=cpu or {key}=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    return device
