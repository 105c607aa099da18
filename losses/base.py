"""The contract between builders and losses.

A builder's ``forward(views)`` returns a :class:`ViewOutputs`; a loss's ``forward(out)`` returns a
:class:`LossOutput`. Every embedding tensor is view-major ``[V, B, ...]``: row ``b`` of every view
comes from the same source image, and the order of views is side-major
(``[t1 x ns, t2 x ns, local crops ...]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn


@dataclass
class ViewOutputs:
    """What a builder returns. Every tensor is [V, B, ...], view-major; row b = image b.

    p: online outputs that receive gradient (predictor output, or projector if none).
    k: targets without gradient (momentum encoder), or None for SimCLR-style methods.
    z: online projector output before the predictor (SNCLR attention, NNCLR support set).
    h: backbone features (MV-MR dependence terms, kNN monitor).
    extras: loss-specific tensors, e.g. PatchMix mixed embeddings, MV-MR hand-crafted features.
    """

    p: Tensor
    k: Tensor | None = None
    z: Tensor | None = None
    h: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


# The builder protocol: what the engine may touch on a model, besides ``forward(views) ->
# ViewOutputs`` (which computes no loss):
#   backbone: nn.Module               the encoder that evaluation keeps (kNN monitor, linear probe)
#   update_momentum(m: float) -> None optional; called with no_grad right before each forward
#                                     (EMA of a momentum encoder)
#   sync_bn: bool                     optional attribute, default True; False keeps BatchNorm
#                                     statistics per GPU (the reference trainer had no SyncBN)
# A builder that needs anything else from the loop has the wrong contract: extend this one.


class LossOutput(NamedTuple):
    loss: Tensor  # scalar, differentiable
    metrics: dict[str, Tensor]  # detached 0-d tensors: logged, never back-propagated


class ContrastiveLoss(nn.Module):
    """Base for every loss here: ``forward(out: ViewOutputs, labels=None) -> LossOutput``.

    A loss reads only the ViewOutputs fields its docstring names, and asserts they exist.
    Hyper-parameters come in as explicit keyword arguments, never ``args``. Shapes come from the
    tensors. State (queues, banks) lives here as registered buffers, updated only in training mode,
    and is checkpointed with ``criterion.state_dict()``.

    ``labels`` (the batch's class labels [B], -1 = unknown, or None) may feed a logged metric such
    as neighbour purity; the loss value never depends on them: pretraining is self-supervised.
    """

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        raise NotImplementedError

    def warnings(self, epoch_metrics: dict[str, float]) -> list[str]:
        """One line per known failure mode visible in an epoch's mean metrics (none by default).

        The training loop prints them, so it never needs to know which loss fails in which way.
        """
        return []


def check_views(*tensors: Tensor | None) -> tuple[Tensor, ...]:
    """Assert each tensor exists and is [V, B, D] with one common B; return them unchanged."""
    batch = None
    for t in tensors:
        if t is None:
            raise ValueError("a ViewOutputs field this loss reads is None: check the builder")
        if t.dim() != 3:
            raise ValueError(f"expected a [V, B, D] tensor, got shape {tuple(t.shape)}")
        if batch is not None and t.shape[1] != batch:
            raise ValueError(f"batch sizes differ between inputs: {t.shape[1]} vs {batch}")
        batch = t.shape[1]
    return tuple(tensors)  # type: ignore[return-value]


def upcast(x: Tensor) -> Tensor:
    """Half-precision embeddings (AMP) become float32; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 agreement of argmax(logits) with labels, as a detached 0-d tensor."""
    return (logits.detach().argmax(-1) == labels).float().mean()


__all__ = ["ViewOutputs", "LossOutput", "ContrastiveLoss", "check_views", "accuracy", "upcast"]
