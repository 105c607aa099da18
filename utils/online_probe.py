"""Online linear probe: a classifier trained during pretraining on detached backbone features.

MV-MR's `OnlineFineTuner` (docs/methods.md §7.4): Linear(feat_dim, C), Adam lr 1e-4, one step per
training step on the backbone features of the NON-augmented view, computed without gradient and in
eval mode (BN running statistics), so the probe never changes the encoder; the official callback
runs the encoder in train mode (docs/methods.md §7.4), which also moves its BN statistics. Any method can use it (`main_pretrain.py --online-probe true`).

We feed it the labels of the training batch (MV-MR iterates a separate labelled loader): the
images are the same, the RNG stream of the training run is untouched, and resume stays exact.
Samples labelled -1 (STL-10's unlabeled split) are left out. The class count is the dataset's real
one (`DatasetInfo.num_classes` from data/loaders.py: a folder tree's train/ class folders).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OnlineProbe:
    """Linear head + its own Adam (not part of the model: checkpoints keep it apart, and kNN,
    linear evaluation and `load_pretrained` never see it). `wrap` (e.g. DistributedDataParallel)
    averages its gradients across processes."""

    def __init__(self, feat_dim: int, num_classes: int, device: torch.device | str,
                 lr: float = 1e-4, wrap: Callable[[nn.Module], nn.Module] | None = None):
        if num_classes is None:
            raise ValueError("the online probe needs the dataset's class count: pass the "
                             "num_classes of the loader's DatasetInfo")
        if num_classes < 2:  # e.g. unlabeled images in one train/<folder>
            raise SystemExit(f"error: the online probe needs labelled data, and this dataset has "
                             f"{num_classes} class: pass --online-probe false")
        self.head = nn.Linear(feat_dim, num_classes).to(device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=lr)
        self._forward = wrap(self.head) if wrap is not None else self.head

    def step(self, backbone: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One Adam step on backbone(images) (eval mode, no gradient) -> probe loss and accuracy."""
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                features = backbone(images).float()
        finally:
            backbone.train(was_training)
        labelled = labels >= 0
        # autocast off: the probe is tiny and its logits should not round to bf16/fp16
        with torch.autocast(images.device.type, enabled=False):
            logits = self._forward(features)
            # every rank runs the same graph (DDP), unlabelled rows weigh 0
            losses = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            loss = (losses * labelled).sum() / labelled.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        correct = (logits.argmax(1) == labels) & labelled
        acc = 100.0 * correct.sum() / labelled.sum().clamp(min=1)
        return {"probe_loss": loss.detach(), "probe_acc": acc.detach()}

    @torch.no_grad()
    def top1(self, features: Tensor, labels: Tensor) -> float:
        """Top-1 accuracy (%) of the probe on precomputed features (the val split)."""
        return 100.0 * (self.head(features.float()).argmax(1) == labels).float().mean().item()

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        saved, ours = state["head"]["weight"].shape[0], self.head.out_features
        if saved != ours:  # same run, other data: a one-line error instead of a size mismatch
            raise SystemExit(f"error: the checkpoint's online probe has {saved} classes, this "
                             f"dataset {ours}: resume on the data it was trained on")
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
