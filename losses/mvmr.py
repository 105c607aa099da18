r"""MV-MR: dependence between the embeddings of an original and an augmented view, and between the
augmented embedding and hand-crafted representations of the original image.

    L = mse(z_o, z) + \sum_{u \in \{z, z_o\}} mean_d relu(m - std_d(u)) + (1 - dCor(z_o/s, z/s))
        + sign \cdot \sum_r dCor(\phi_r(x_o), z/s)

with dCor the (V-statistic) distance correlation over the batch, s = 32 and sign = +1 as the
official code has it (the paper says "maximise dependence", i.e. sign = -1; docs/methods.md §7.6-1).

Source: Kinakh, Drozdova, Voloshynovskiy, "MV-MR: multi-views and multi-representations for
self-supervised learning and knowledge distillation" (arXiv:2303.12130); vkinakh/mv-mr
``src/model/self_supervised_module.py::step`` and ``src/loss/distance_correlation.py``.

Reads: out.p [2, B, D] with view 0 = the original (un-augmented) image and view 1 = the augmented
one (both with gradient), and every out.extras["rep_<name>"] [B, *] (hand-crafted representations
of the original view, constants; see data/representations.py).

Distributed: dCor couples every pair of the batch, so z, z_o and the representations are gathered
from all ranks with gradient and every rank computes the same global-batch loss L. The gather's
backward sums over ranks (utils/dist.py), so each rank's z receives W x dL/dz, and DDP's average of
the parameter gradients gives exactly the full-batch gradient dL/dtheta.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, check_views, upcast
from utils import dist

REP_PREFIX = "rep_"  # ViewOutputs.extras keys that hold representations of the original view

Reps = Sequence[Tensor] | Mapping[str, Tensor]


def pairwise_distance(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Official distance sqrt(clamp(|x_i|^2 - 2 x_i.x_j + |x_j|^2, eps)): x [n, p] -> [n, n].

    The clamp keeps the sqrt differentiable; it also makes the diagonal sqrt(eps) = 0.01, not 0.
    """
    sq = (x * x).sum(1).reshape(-1, 1)  # [n, 1]
    d2 = sq - 2 * (x @ x.t()) + sq.t()
    return d2.clamp(min=eps).sqrt()


def _double_centre(a: Tensor) -> Tensor:
    # as the official code: the row means broadcast along rows; a is symmetric so this is standard
    return a - a.mean(1) - a.mean(0).unsqueeze(1) + a.mean()


def distance_correlation(x: Tensor, y: Tensor, eps: float = 1e-4) -> Tensor:
    """Distance correlation of the batch x [n, p] with y [n, q], as the official code (a scalar).

    dCov = sqrt(mean(A * B) / n^2), with A, B the double-centred distance matrices; the extra
    1/n^2 inside the means is the official one and cancels in dCor = dCov / sqrt(dVarX dVarY).
    """
    n = x.shape[0]
    if n < 2 or y.shape[0] != n:
        raise ValueError(f"distance correlation needs two batches of the same size >= 2, got "
                         f"{x.shape[0]} and {y.shape[0]} samples")
    a = _double_centre(pairwise_distance(x, eps))
    b = _double_centre(pairwise_distance(y, eps))
    dcov = torch.sqrt((a * b).mean() / n**2)
    dvar_x = torch.sqrt((a * a).mean() / n**2)
    dvar_y = torch.sqrt((b * b).mean() / n**2)
    return dcov / torch.sqrt(dvar_x * dvar_y)


def _named(reps: Reps) -> list[tuple[str, Tensor]]:
    if isinstance(reps, Mapping):
        return list(reps.items())
    return [(f"rep{i}", r) for i, r in enumerate(reps)]


def mvmr_terms(z: Tensor, z_orig: Tensor, reps: Reps, std_margin: float = 1.0,
               scale: float = 32.0) -> dict[str, Tensor]:
    """Every term of the MV-MR loss, on the batch gathered from all ranks (with gradient).

    Shapes: z, z_orig [B, D] (augmented / original projector outputs); reps [B, *] each, flattened.
    Returns {"mse", "std", "dc_zz" (= 1 - dCor(z_o, z)), "dc_<name>" per representation} where
    <name> is the mapping key, or rep0, rep1, ... for a list. Half precision is computed in float32
    with autocast off: the distance matrices overflow or cancel in fp16 even with the /32 trick.
    """
    z = dist.gather_with_grad(upcast(z), dim=0)  # [W*B, D]
    z_orig = dist.gather_with_grad(upcast(z_orig), dim=0)
    named = [(k, dist.gather_with_grad(upcast(r).flatten(1), dim=0)) for k, r in _named(reps)]
    if z.shape[0] < 2:
        raise ValueError("MV-MR needs a (global) batch of at least 2 images: the variance hinge "
                         "and the distance correlation are undefined for one sample")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z_scaled, z_orig_scaled = z / scale, z_orig / scale  # "FP16 trick"; dCor ~ scale-free
        terms = {
            "mse": F.mse_loss(z_orig, z),
            "std": (torch.relu(std_margin - z.std(dim=0)).mean()
                    + torch.relu(std_margin - z_orig.std(dim=0)).mean()),
            "dc_zz": 1 - distance_correlation(z_orig_scaled, z_scaled),
        }
        for name, rep in named:
            terms[f"dc_{name}"] = distance_correlation(rep.to(z.dtype), z_scaled)
    return terms


def combine_terms(terms: Mapping[str, Tensor], representation_sign: float = 1.0) -> Tensor:
    """mse + std + dc_zz + sign * sum of the representation terms (the official order of sums)."""
    loss = terms["mse"] + terms["std"] + terms["dc_zz"]
    for name, value in terms.items():
        if name not in ("mse", "std", "dc_zz"):
            loss = loss + representation_sign * value
    return loss


def mvmr_loss(z: Tensor, z_orig: Tensor, reps: Reps, std_margin: float = 1.0, scale: float = 32.0,
              representation_sign: float = 1.0) -> Tensor:
    """The MV-MR loss (a scalar). representation_sign = +1 is the official code (it *minimises*
    dCor with the representations), -1 what the paper describes. See mvmr_terms for shapes."""
    return combine_terms(mvmr_terms(z, z_orig, reps, std_margin, scale), representation_sign)


class MVMRLoss(ContrastiveLoss):
    """MV-MR loss. Reads out.p [2, B, D] (view 0 = original, view 1 = augmented) and the
    out.extras entries whose keys start with "rep_" ([B, *] each). Metrics: every term."""

    def __init__(self, std_margin: float = 1.0, scale: float = 32.0,
                 representation_sign: float = 1.0):
        super().__init__()
        self.std_margin = std_margin
        self.scale = scale
        self.representation_sign = representation_sign

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        (p,) = check_views(out.p)
        if p.shape[0] != 2:
            raise ValueError(f"MV-MR reads 2 views [original, augmented], got {p.shape[0]}")
        reps = {k[len(REP_PREFIX):]: v for k, v in out.extras.items() if k.startswith(REP_PREFIX)}
        terms = mvmr_terms(p[1], p[0], reps, self.std_margin, self.scale)
        loss = combine_terms(terms, self.representation_sign)
        return LossOutput(loss, {k: v.detach() for k, v in terms.items()})


__all__ = ["MVMRLoss", "distance_correlation", "mvmr_loss", "mvmr_terms", "pairwise_distance"]
