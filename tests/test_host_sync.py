"""Device->host syncs per training step, counted on the CPU for every registered method.

A sync (``cudaStreamSynchronize``) stops the CPU from queueing work ahead of the GPU. On the CPU we
count what would be one on CUDA: reading a scalar (``item``/``bool``/``int``/``float``: the aten op
``_local_scalar_dense``), ``tolist``/``cpu``, and data-dependent shapes (``nonzero``,
``masked_select``, boolean-mask indexing, ``bincount``, ``unique``), over one whole step: the
augmentation on the device (in-memory path), forward, loss, backward, optimizer and the guard.

Budget: 1 per step, the read of TrainStep's stacked flags (loss/gradient finite, preemption). fp16
adds the GradScaler's own read of ``found_inf`` inside ``scaler.step`` (inherent without fused
optimizers). Known extra reads, each named in ALLOWED with its reason.
"""

import argparse
import traceback
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import data.batched as batched
from data.batched import BatchMultiView
from main_pretrain import get_args_parser
from models.methods import METHODS, build_model
from utils.training import TrainStep, build_scaler

TINY = ["--arch", "resnet18", "--width", "8", "--img-size", "16", "--moco-dim", "16",
        "--moco-mlp-dim", "32", "--proj-hidden-dim", "32", "--proj-dim", "16",
        "--pred-hidden-dim", "32", "--queue-size", "64", "--bank-size", "64", "--topk", "3",
        "--optimizer", "sgd", "--lr", "0.01",
        "--clip-pretrained", "none", "--clip-image-size", "32"]  # a random CLIP: no download  # fmt: skip
BUDGET = 1
# known reads beyond the budget, with their reason
ALLOWED = {
    # PatchMix decides whether to mix from a CPU-generator draw: a host tensor, no device sync
    "patchmix": 1,
    # RandAugment (p = 0.5) needs each op group's size on the host to batch torchvision's kernels:
    # one tolist per op slot (2 slots)
    "mocov2": 2,
    "mocov2_dsf": 2,
}
# reads made inside torchvision, counted apart (reported, not budgeted): its transforms' get_params
# draw from the CPU generator (MV-MR's per-image representations: host tensors, no device sync);
# RandAugment's kernels (autocontrast, solarize, affine) read values themselves
OUTSIDE = ("torchvision/",)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "_unique2", "unique_dim",
            "unique_consecutive", "nonzero_static"}


class SyncCounter(TorchDispatchMode):
    """Counts aten ops that need the values of a tensor on the host."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in ("index", "index_put", "index_put_") and any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in (args[1] or [])
        ):
            name = "bool_mask_index"
        if name in SYNC_OPS or name == "bool_mask_index":
            self.counts[f"torchvision:{name}" if inside_torchvision() else name] += 1
        return func(*args, **(kwargs or {}))


def inside_torchvision() -> bool:
    return any(part in frame.filename for frame in traceback.extract_stack() for part in OUTSIDE)


def tiny_args(method: str, amp: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    args = parser.parse_args(["--method", method, *TINY, "--amp", amp])
    args.device = torch.device("cpu")
    return args


def count_one_step(method: str, amp: str, monkeypatch) -> Counter:
    monkeypatch.setattr(batched, "_sync_free", lambda x: True)  # the accelerator branch
    args = tiny_args(method, amp)
    model, _ = build_model(args)
    criterion = METHODS[method].loss(args)
    augment = BatchMultiView(METHODS[method].views(args), (0.5,) * 3, (0.25,) * 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = TrainStep(model, model, criterion, optimizer, build_scaler(args), args,
                     prepare=lambda x, y: (augment(x), y))
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    batch = [(images, torch.arange(8) % 3)]
    step(batch, 0, 0)  # warm-up: lazily built caches (EMA lists, sin-cos tables) are not per step
    counter, calls = SyncCounter(), Counter()
    for name in ("tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **k):
            calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    if hasattr(model, "update_momentum"):
        model.update_momentum(0.99)
    with counter:
        result = step(batch, 0, 1)
    assert result is not None and not result["skipped"] or amp == "fp16"
    return counter.counts + calls


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_sync_per_step(method, monkeypatch, one_thread):
    counts = count_one_step(method, "off", monkeypatch)
    total = sum(v for k, v in counts.items() if not k.startswith("torchvision:"))
    print(f"{method}: {total} host reads per step {dict(counts)}")
    assert total <= BUDGET + ALLOWED.get(method, 0), dict(counts)


def test_fp16_adds_only_the_scalers_read(monkeypatch, one_thread):
    counts = count_one_step("mocov3", "fp16", monkeypatch)
    assert sum(counts.values()) <= BUDGET + 1, dict(counts)  # + GradScaler's found_inf


def test_hue_branches_agree():
    """The sync-free hue path (every sample, kept where selected) equals the indexed one."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    apply = torch.rand(16, generator=g) < 0.8
    factors = torch.rand(16, 4, generator=g) * 0.4 + 0.8
    factors[:, 3] = torch.rand(16, generator=g) * 0.2 - 0.1
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(16)])
    indexed = batched.color_jitter(x, apply, factors, order)
    original = batched._sync_free
    try:
        batched._sync_free = lambda t: True
        dense = batched.color_jitter(x, apply, factors, order)
    finally:
        batched._sync_free = original
    assert torch.equal(indexed, dense)
