"""Multi-process training with torchrun: a handful of functions driven by its environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from transformer.device import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process on its machine (LOCAL_RANK 0, any RANK): it prepares what lives on the machine's
        own disk, such as the data cache, which a multi-machine run need not share."""
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in a single process)."""
        if self.enabled:
            dist.barrier()

    def sum_over_ranks(self, value: int) -> torch.Tensor:
        """``value`` summed over every rank, as a 0-dim float tensor on this rank's device (no host sync).

        A collective: every rank must call it.
        """
        total = torch.tensor(float(value), device=self.device)
        if self.enabled:
            dist.all_reduce(total)
        return total

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` is True on every rank (a collective: every rank must call it)."""
        if not self.enabled:
            return ok
        flag = torch.tensor([float(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


def setup(device_name: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process.

    On several machines (``torchrun --nnodes N``) RANK numbers the processes of the whole run and LOCAL_RANK those
    of one machine (it picks the GPU): each machine has a LOCAL_RANK 0, and only RANK 0 is the main process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(device=resolve_device(device_name, key="train.device"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name, local_rank=local_rank, key="train.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown(context: DistributedContext, *, finished: bool = True) -> None:
    """Leave the process group.

    After a run that ``finished`` (every rank got to the end), wait for the others first: a gloo rank that
    leaves while another still writes its checkpoint can abort at exit. After an error the others may never
    come, so then it leaves at once.
    """
    if context.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
