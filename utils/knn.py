"""Weighted kNN classification (InstDisc / DINO vote), chunked so memory stays bounded.

score_c(x) = sum over the k nearest train features f_j (cosine) with label c of exp(s_j / T).
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from utils import dist
from utils.misc import to_device

# entries of one [test chunk, bank block] similarity block: 256 MB of fp32 on CPU, 2 GB on CUDA,
# where thin GEMMs (about 50 test rows against an ImageNet bank) would leave the GPU idle
SIMILARITY_BUDGET = {"cpu": 2**26, "cuda": 2**29}


def _progress(loader: Iterable, desc: str) -> Iterable:
    """A tqdm bar on rank 0 when stdout is a terminal; the bare loader in logs and on other ranks."""
    show = dist.is_main_process() and sys.stdout.isatty()
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) if show else loader


@torch.no_grad()
def extract_features(encode: Callable[[Tensor], Tensor], loader: Iterable, num_samples: int,
                     device: torch.device, prepare: Callable[[Tensor], Tensor] | None = None,
                     dtype: torch.dtype = torch.float32, desc: str = "features"
                     ) -> tuple[Tensor, Tensor]:
    """Features [N, D] (in `dtype`) and labels [N] of a loader of (image, label, index) batches.

    Under DDP each rank encodes its shard; rows are placed by dataset index and summed across ranks,
    so DistributedSampler's padding (repeated indices) cannot count a sample twice. Every rank
    returns the whole set. A fp16 bank halves the memory of ImageNet-scale banks.
    """
    feats: Tensor | None = None
    labels = torch.zeros(num_samples, dtype=torch.long, device=device)
    seen = torch.zeros(num_samples, device=device)
    for images, target, index in _progress(loader, desc):
        images, index = to_device(images, device), index.to(device)
        x = prepare(images) if prepare is not None else images
        f = encode(x)
        if feats is None:
            feats = torch.zeros(num_samples, f.shape[1], device=device, dtype=dtype)
        feats.index_copy_(0, index, f.to(dtype))
        labels.index_copy_(0, index, target.to(device))
        seen.index_fill_(0, index, 1.0)
    if feats is None:
        raise ValueError("the feature loader is empty")
    if dist.get_world_size() > 1:
        for t in (feats, seen):
            torch.distributed.all_reduce(t)
        labels_f = labels.float() * (seen > 0)
        torch.distributed.all_reduce(labels_f)
        seen.clamp_(min=1)
        feats.div_(seen[:, None].to(dtype))  # in place: no second N x D copy
        labels = (labels_f / seen).round().long()
    return feats, labels


def _cosine(train_f: Tensor) -> Callable[[Tensor, Tensor, int], Tensor]:
    """similarity(queries, bank block, block start) without a normalised copy of the bank."""
    acc = torch.promote_types(train_f.dtype, torch.float32)
    inv_norm = 1.0 / torch.linalg.vector_norm(train_f, dim=1, dtype=acc).clamp(min=1e-12)

    def similarity(queries: Tensor, block: Tensor, start: int) -> Tensor:
        return (queries @ block.T).mul_(inv_norm[start:start + block.shape[0]])

    return similarity


def _top_neighbours(chunk: Tensor, train_f: Tensor, kmax: int, block_rows: int,
                    similarity: Callable[[Tensor, Tensor, int], Tensor]) -> tuple[Tensor, Tensor]:
    """(similarities, bank indices) [c, kmax] of the kmax most similar bank rows, in fp32.

    The bank is read in blocks of block_rows cast to fp32 (a fp16 bank is never copied whole); each
    block's own top kmax are merged with the best so far, so no [c, block] index tensor or copy of
    the similarity block is ever made.
    """
    top_sim = chunk.new_empty(chunk.shape[0], 0)
    top_idx = torch.empty(chunk.shape[0], 0, dtype=torch.long, device=chunk.device)
    for start in range(0, train_f.shape[0], block_rows):
        block = train_f[start:start + block_rows].to(chunk.dtype)  # no copy for a fp32 bank
        sim = similarity(chunk, block, start)  # [c, n_block]
        block_sim, block_idx = sim.topk(min(kmax, sim.shape[1]), dim=1)
        sim, idx = torch.cat([top_sim, block_sim], 1), torch.cat([top_idx, block_idx + start], 1)
        top_sim, pos = sim.topk(min(kmax, sim.shape[1]), dim=1)  # sorted, descending
        top_idx = idx.gather(1, pos)
    return top_sim, top_idx


@torch.no_grad()
def knn_classify(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor,
                 ks: Iterable[int] = (10, 20, 100, 200), temperature: float = 0.07,
                 num_classes: int | None = None, chunk_size: int = 1024,
                 similarity: Callable[[Tensor, Tensor], Tensor] | None = None,
                 budget: int | None = None) -> dict[int, float]:
    """Top-1 accuracy (%) of the weighted kNN vote for each k.

    Cosine similarity (queries normalised, the bank's norms divided out per block) unless a
    `similarity(test_chunk, bank_block)` is given (e.g. BeCLR's Bregman similarity). Runs in fp32
    whatever the caller's autocast and the bank's dtype (a fp16 bank is cast block by block).
    A [chunk, block] similarity block holds at most `budget` entries (default: by device).
    """
    device = train_f.device
    budget = budget or SIMILARITY_BUDGET.get(device.type, SIMILARITY_BUDGET["cpu"])
    n_bank = train_f.shape[0]
    ks = sorted({min(k, n_bank) for k in ks})
    kmax = ks[-1]
    num_classes = num_classes or int(train_y.max()) + 1
    acc = torch.promote_types(train_f.dtype, torch.float32)  # fp32 at least (fp64 in tests)
    # a fp32 bank is read whole; a fp16 one in blocks whose fp32 copy fits the budget
    block_rows = n_bank if train_f.dtype == acc else max(1, budget // train_f.shape[1])
    block_rows = min(block_rows, n_bank)
    chunk_size = max(1, min(chunk_size, budget // block_rows))
    correct = torch.zeros(len(ks), dtype=torch.long, device=device)  # one readback at the end
    with torch.autocast(device.type, enabled=False):  # fp16 neighbours would be approximate
        test_f = test_f.to(acc)
        if similarity is None:
            test_f = F.normalize(test_f, dim=1)
            sim_fn = _cosine(train_f)
        else:
            def sim_fn(queries: Tensor, block: Tensor, start: int) -> Tensor:
                return similarity(queries, block)
        for start in range(0, test_f.shape[0], chunk_size):
            chunk = test_f[start:start + chunk_size]
            top_sim, top_idx = _top_neighbours(chunk, train_f, kmax, block_rows, sim_fn)
            weights = (top_sim / temperature).exp()
            labels = train_y[top_idx]  # [c, kmax]
            truth = test_y[start:start + chunk_size]
            for i, k in enumerate(ks):  # vote by scatter-add: no [c, k, C] one-hot
                scores = weights.new_zeros(len(chunk), num_classes)
                scores.scatter_add_(1, labels[:, :k], weights[:, :k])
                correct[i] += (scores.argmax(1) == truth).sum()
    counts = correct.tolist()
    return {k: 100.0 * counts[i] / test_f.shape[0] for i, k in enumerate(ks)}


def encoder_in_eval(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """The module's forward in eval mode (BN running statistics), restoring train mode after."""

    def encode(x: Tensor) -> Tensor:
        was_training = module.training
        module.eval()
        try:
            return module(x)
        finally:
            module.train(was_training)

    return encode
