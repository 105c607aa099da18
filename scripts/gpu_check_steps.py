"""scripts/gpu_check.py's one-step checks, outside the training loop: the FLOPs of a step, one fp32
step on the device against the CPU, and one step under DDP against one process.

The comparisons run the model in eval mode (BatchNorm running statistics, no dropout) and without
the forward's own randomness (DETERMINISTIC): the CPU, the GPU and the ranks draw different random
numbers, and what is compared is the arithmetic, gathers and gradient averaging.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import torch
from gpu_check_report import one_line
from gpu_check_runs import parse

from models.methods import METHODS, build_model

# the forward's own randomness, off for the CPU and DDP comparisons (see the docstring)
DETERMINISTIC = {"patchmix": ["--mix-num", "1"],
                 "mvmr": ["--representations", "pixels,hog,std"],
                 "mvmr_clip": ["--representations", "pixels,hog,std"]}


def model_and_views(flags: list[str], device: torch.device, batch: int, seed: int = 0):
    """(model, criterion, views, labels) built on the CPU with a fixed seed, then moved."""
    run_args = parse(flags)
    run_args.device = device
    torch.manual_seed(seed)
    model = build_model(run_args)[0]
    criterion = METHODS[run_args.method].loss(run_args)
    g = torch.Generator().manual_seed(seed)
    sizes = [spec.size for spec in METHODS[run_args.method].views(run_args)]
    views = [torch.randn(batch, 3, s, s, generator=g) for s in sizes]
    labels = torch.randint(0, 4, (batch,), generator=g)
    return model.to(device), criterion.to(device), [v.to(device) for v in views], labels.to(device)


def loss_and_grads(model, criterion, views, labels) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(views)
    loss = criterion(out, labels=labels).loss
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return float(loss.detach()), torch.cat(grads).double().cpu()


def step_flops(flags: list[str], device: torch.device, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model, criterion, views, labels = model_and_views(flags, device, batch)
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_and_grads(model, criterion, views, labels)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def exact_fp32():
    """No TF32: the device step must be the CPU's fp32 arithmetic."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def device_vs_cpu(flags: list[str], device: torch.device, batch: int = 4) -> dict:
    results = []
    for dev in (torch.device("cpu"), device):
        model, criterion, views, labels = model_and_views(flags, dev, batch)
        model.eval()  # BatchNorm running statistics and no dropout (see the docstring)
        with exact_fp32():
            results.append(loss_and_grads(model, criterion, views, labels))
    (loss_cpu, g_cpu), (loss_dev, g_dev) = results
    return {"loss_cpu": loss_cpu, "loss_dev": loss_dev,
            "loss_err": abs(loss_dev - loss_cpu) / max(abs(loss_cpu), 1e-12),
            "grad_err": relative(g_dev, g_cpu)}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over all gradient entries."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ============ DDP: one step over 2+ processes equals one process ============


def ddp_worker(rank: int, world: int, port: int, flag_sets: dict, batch: int, out_dir: str) -> None:
    import torch.distributed as torch_dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    torch_dist.init_process_group("nccl" if cuda else "gloo", world_size=world, rank=rank,
                                  init_method=f"tcp://127.0.0.1:{port}")
    results = {}
    for name, flags in flag_sets.items():
        try:
            model, criterion, views, labels = model_and_views(flags, device, batch)
            model.eval()  # see the docstring: no per-rank random numbers in the step
            ddp = torch.nn.parallel.DistributedDataParallel(model,
                                                            device_ids=[rank] if cuda else None)
            shard = slice(rank * batch // world, (rank + 1) * batch // world)
            with exact_fp32():
                loss, _ = loss_and_grads(ddp, criterion, [v[shard] for v in views], labels[shard])
            mean_loss = torch.tensor([loss], device=device)
            torch_dist.all_reduce(mean_loss)
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results[name] = (float(mean_loss) / world, grads.double().cpu())
        except Exception as e:  # noqa: BLE001 - reported per method
            results[name] = one_line(e)
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "ddp.pt"))
    torch_dist.destroy_process_group()


def ddp_vs_one(flag_sets: dict, world: int, batch: int = 8) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(ddp_worker, args=(world, port, flag_sets, batch, out_dir), nprocs=world)
        many = torch.load(os.path.join(out_dir, "ddp.pt"), weights_only=False)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    report = {}
    for name, flags in flag_sets.items():
        if isinstance(many[name], str):
            report[name] = {"error": many[name]}
            continue
        model, criterion, views, labels = model_and_views(flags, device, batch)
        model.eval()
        with exact_fp32():
            loss, grads = loss_and_grads(model, criterion, views, labels)
        report[name] = {"loss_one": loss, "loss_ddp": many[name][0],
                        "loss_err": abs(many[name][0] - loss) / max(abs(loss), 1e-12),
                        "grad_err": relative(many[name][1], grads)}
    return report
