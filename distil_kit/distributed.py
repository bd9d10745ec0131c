"""torchrun / DDP plumbing: who am I, and the few collectives the engine needs. One process is world size 1."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import KitError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    nodes: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(use_cuda: bool, timeout_s: float = 300.0) -> World:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); a lone process needs none. A collective
    waits ``timeout_s`` for the other ranks, then fails (``joined_world`` says so in one line)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        rank = int(os.environ["RANK"])
        store = _attempt_store(rank, size, timedelta(seconds=timeout_s))
        dist.init_process_group(
            backend=backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s)
        )
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    return World(
        rank=dist.get_rank(),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        nodes=max(1, size // local_size),
        backend=backend,
    )


_groups_joined = itertools.count()  # process groups this process has made (a seed sweep makes one per seed)


def _attempt_store(rank: int, size: int, timeout: timedelta) -> dist.Store:
    """torchrun's rendezvous store with keys of this attempt's and this process group's own. The elastic agent's
    store outlives a failed attempt (``--max-restarts``) and each seed of a sweep's group: a rank that read an
    earlier group's addresses would connect to a dead one or hang; the prefix keeps every group's keys apart (all
    ranks make their groups in the same order, so their counts agree). The agent hosts the store where torchrun
    says so, else rank 0 does (as ``init_process_group``'s own env:// store)."""
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=not agent_hosts and rank == 0,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"distil_kit/attempt_{attempt}/group_{next(_groups_joined)}", store)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj, world: World) -> list:
    """Every rank's ``obj``, on every rank (small objects only: dev predictions)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def on_main(world: World, work) -> None:
    """Call ``work()`` on rank 0 only (file writes); its failure is raised on every rank, so that no other rank
    waits forever in the next collective for a rank that has gone."""
    error = None
    if world.main:
        try:
            work()
        except Exception as e:
            error = e
    if world.distributed:
        shared = [f"rank 0 failed ({type(error).__name__}): {error}" if error is not None else None]
        dist.broadcast_object_list(shared, src=0)
        if not world.main and shared[0] is not None:
            raise KitError(shared[0])
    if error is not None:
        raise error


@contextmanager
def joined_world(use_cuda: bool, timeout_s: float = 300.0) -> Iterator[World]:
    """``init_world`` for the length of a ``with`` block, then leave the process group. On success every rank first
    waits for the others: a rank tearing its gloo connections down while another still works can abort in teardown
    ("terminate called without an active exception"). A failing rank does not wait, since the ranks
    it would wait for may never come. A collective that the other ranks leave unanswered (one hung, or died)
    ends the rank with a one-line KitError."""
    world = init_world(use_cuda, timeout_s)
    try:
        yield world
        if world.distributed:
            dist.barrier()
    except RuntimeError as e:
        text = str(e)
        if not (world.distributed and (isinstance(e, dist.DistError) or "gloo" in text or "NCCL" in text)):
            raise
        # The backend's first sentence, without its source location: "Timed out waiting 300000ms for recv
        # operation to complete", "Read error [127.0.0.1]:35229: Connection reset by peer"
        cause = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0]).split(". ")[0]
        raise KitError(
            f"rank {world.rank}: another rank stopped answering (it hung past collective_timeout_s={timeout_s:g}, "
            f"or died); this rank stops too ({world.backend}: {cause})"
        ) from e
    finally:
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()
