"""Data-parallel training under torchrun: every process takes its share of each batch and the gradients are
averaged with torch.distributed (gloo on CPUs, NCCL on GPUs). Outside torchrun everything here is a no-op, so
one code path trains on one process or many."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def init_from_environment() -> bool:
    """Joins the process group torchrun describes in the environment (WORLD_SIZE > 1); False when alone."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_leader() -> bool:
    return rank_and_size()[0] == 0


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()


def broadcast_parameters(module: nn.Module) -> None:
    """Every process starts from the leader's weights."""
    if rank_and_size()[1] > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def my_part(batch: Tensor) -> Tensor:
    """This process's rows of a global batch. A batch smaller than the group is worked whole by everyone: the
    averaged gradient is then the batch's own, and every process still takes part in each all-reduce."""
    rank, size = rank_and_size()
    return batch[rank::size] if len(batch) >= size else batch


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Mean of the processes' gradients: with the same global batches and steps as one process, the group
    follows (up to float rounding) the same optimisation, so the model's quality is the same."""
    _, size = rank_and_size()
    if size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= size
