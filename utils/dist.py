"""Distributed plumbing on PyTorch's own engine (DDP, gloo/nccl). Every helper works with no group.

Gradient convention of :func:`gather_with_grad`: the backward all-reduces (sums) the gradient of the
gathered tensor, so each rank's input receives ``W x`` the full-batch gradient of the mean-over-ranks
loss; DDP's averaging of parameter gradients then gives exactly the full-batch parameter gradient.
"""

from __future__ import annotations

import builtins
import datetime
import os
import signal
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, ...]:
        x = x.contiguous()  # all_gather on a non-contiguous view gives wrong results (pytorch#120386)
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:
        stacked = torch.stack([g.contiguous() for g in grads])  # [W, *x.shape]
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: Tensor, dim: int = 0) -> Tensor:
    """Concatenate x from every rank along dim; gradients flow back to each rank's x."""
    if get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=dim)


@torch.no_grad()
def gather_no_grad(x: Tensor, dim: int = 0) -> Tensor:
    """Concatenate x from every rank along dim, as constants (momentum keys, bank entries)."""
    if get_world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x)
    return torch.cat(out, dim=dim)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of x over ranks (a copy; x itself is untouched)."""
    if get_world_size() == 1:
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / get_world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects); [obj] with no process group."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if get_world_size() > 1:
        dist.barrier()


def setup_for_distributed(is_main: bool) -> None:
    """Silence print() on ranks other than 0 unless called with force=True (DINO's trick)."""
    builtin_print = builtins.print

    def print_(*args: Any, **kwargs: Any) -> None:
        force = kwargs.pop("force", False)  # builtin print() rejects the keyword, even on rank 0
        if is_main or force:
            builtin_print(*args, **kwargs)

    builtins.print = print_


def launch(main_worker: Callable[..., Any], args: Any) -> None:
    """The only launch logic: torchrun (env vars), moco-v3 style mp.spawn, or one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun started one process per GPU
        main_worker(int(os.environ.get("LOCAL_RANK", 0)), args)
    elif args.multiprocessing_distributed:  # one process per local GPU (or --nproc-cpu on CPU)
        nprocs = torch.cuda.device_count() or args.nproc_cpu
        args.world_size_nodes = args.world_size  # moco-v3: --world-size counts nodes before spawn
        spawn_and_wait(main_worker, nprocs, args)
    else:
        main_worker(0 if torch.cuda.is_available() else None, args)


def spawn_and_wait(main_worker: Callable[..., Any], nprocs: int, args: Any) -> None:
    """mp.spawn that forwards SIGTERM/SIGUSR1 to the workers (preemption) and exits with the first
    failing worker's status (so a requeue status survives), instead of a traceback."""
    context = mp.spawn(main_worker, nprocs=nprocs, args=(args,), join=False)

    def forward(signum: int, frame: object) -> None:
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as e:
        for p in context.processes:  # a dead rank must not leave the others hanging
            if p.is_alive():
                p.terminate()
        raise SystemExit(e.exit_code if e.exit_code and e.exit_code > 0 else 1) from None
    except mp.ProcessRaisedException as e:
        raise SystemExit(f"a worker failed: {str(e).strip().splitlines()[-1]}") from None


def init(local_rank: int | None, args: Any) -> None:
    """Join the process group if there is one; set args.rank/world_size/gpu/device; silence rank != 0."""
    args.gpu = local_rank if torch.cuda.is_available() else None
    timeout = datetime.timedelta(seconds=getattr(args, "dist_timeout", 600))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        args.rank, args.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        init_method = "env://"
    elif args.multiprocessing_distributed:
        nprocs = torch.cuda.device_count() or args.nproc_cpu
        args.rank = args.rank * nprocs + local_rank
        args.world_size = args.world_size_nodes * nprocs
        init_method = args.dist_url
    else:
        args.rank, args.world_size = 0, 1
        init_method = None
    if args.gpu is not None:
        torch.cuda.set_device(args.gpu)
        args.device = torch.device("cuda", args.gpu)
        torch.backends.cudnn.benchmark = True  # fixed input shapes (drop_last): autotune once
    else:
        args.device = torch.device("cpu")
    if init_method is not None:
        backend = "nccl" if args.gpu is not None else "gloo"
        dist.init_process_group(backend, init_method=init_method, world_size=args.world_size,
                                rank=args.rank, timeout=timeout)
    setup_for_distributed(args.rank == 0)


def ddp_wrapper(args: Any) -> Callable[[nn.Module], nn.Module] | None:
    """DistributedDataParallel on this process's device, or None when there is one process."""
    if args.world_size <= 1:
        return None
    device_ids = [args.gpu] if args.gpu is not None else None
    return lambda module: nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
