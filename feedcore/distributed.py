"""Process groups for TorchRec's DistributedModelParallel: one process here, N under torchrun.

Under `torchrun`, RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT come from the launcher; in a plain
process we start a single-member group on a free loopback port, so the same sharded training code
(fused embedding kernels, planner, DMP) runs on a laptop, in CI and on N GPUs.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[int, int]]:
    """Yield (rank, world_size), creating the default process group if none exists.

    gloo on CPU, NCCL on CUDA. A group created here is destroyed on exit; one created by the
    caller (e.g. a torchrun script) is left alone.
    """
    if dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()
