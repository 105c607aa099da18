r"""PatchMix soft-target contrasts (Shen et al. 2023, "Inter-Instance Similarity Modeling for
Contrastive Learning"; visresearch/patchmix ``main_pretrain.py::train_epoch``, ``module/loss.py``).

    ctr(q, k, Y) = mean_b \sum_c -Y_bc log softmax_c( norm(q) norm(gather(k))^T / T )   (no 2T)
    L = ctr(q1, k2, I_eps) + ctr(mq2, k1, Y_mix)/2 + ctr(mq2, mk1, Y_mixmix)/2
        + \sum_c [ctr(l_c, k1, I_eps) + ctr(l_c, k2, I_eps)
                  + ctr(ml_c, k1, Y_mix) + ctr(ml_c, k2, Y_mix)] / C

q1 = online(x1), k1, k2 = momentum(x1), momentum(x2), mk1 = momentum(mix(x1)), mq2 =
online(mix(x2)), l_c / ml_c = online(local crop c / its mix). I_eps = (1 - eps) I + eps/N carries
the official code's hidden eps = 0.1 (docs/methods.md §9.6-6; ``smoothing=0`` gives one-hot targets).
Y_mix puts 1/m on each source image of a mixed image, Y_mixmix [0.25, 0.5, 0.25] on the
overlapping neighbours (m = 2; see patchmix_targets). Columns are global (row g of rank r is column
g + B r, N = B W). The original-to-original term runs one way only, q1 -> k2 (§9.6-2).

Reads: out.p [1 + C, B, D] (q1, then the C local-crop queries; grad), out.k [2, B, D] (k1, k2),
out.extras["p_mix"] [1 + C, B, D] (mq2, then the mixed local-crop queries; grad),
out.extras["k_mix"] [1, B, D] (mk1), and optionally out.extras["mixed"] (0-d bool, False when
the builder skipped mixing at this step: the mixed targets are then the identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from utils import dist


def _soft_one_hot(cols: Tensor, on: Tensor, num_classes: int, off: float,
                  accumulate: bool) -> Tensor:
    """off everywhere, on (0-d or [K]) at cols [B, K]; repeats overwrite unless accumulate."""
    on = on.expand(cols.shape)
    out = torch.full((cols.shape[0], num_classes), off, dtype=on.dtype, device=cols.device)
    return out.scatter_add_(1, cols, on - off) if accumulate else out.scatter_(1, cols, on)


def patchmix_targets(batch: int, m: int, smoothing: float, like: Tensor,
                     accumulate: bool = False) -> tuple[Tensor, Tensor]:
    """(Y_mix, Y_mixmix), each [B, B W], in like's dtype and device (visresearch/patchmix
    ``module/mix.py``; the mixing itself is data/mix.py::patch_mix).

    Columns are global: local image g is column g + B rank, N = B W; eps = smoothing:

        Y_mix[g]    = (1 - eps)/m + eps/N         on columns {g, ..., g+m-1} mod B
        Y_mixmix[g] = (1 - eps) w_i / m + eps/N   on columns (g - m + 1 + i) mod B, i = 0..2m-2,
                      w_i = 1 - |m - i - 1| / m   ([0.25, 0.5, 0.25] for m = 2)
        every other entry eps/N.

    As the official ``scatter_``, a column listed twice (B < 2m - 1) keeps one value instead of
    their sum (docs/methods.md §9.6-4); ``accumulate=True`` adds them, so every row sums to 1 for any
    B. m = 1 gives an unmixed batch's targets: both are then the smoothed identity I_eps.
    """
    rank, num_classes = dist.get_rank(), batch * dist.get_world_size()
    off, kw = smoothing / num_classes, {"device": like.device}
    ids = torch.arange(batch, **kw)[:, None]  # [B, 1]
    src_cols = (ids + torch.arange(m, **kw)) % batch + batch * rank  # [B, m]
    mix_cols = (ids - m + 1 + torch.arange(2 * m - 1, **kw) + batch) % batch + batch * rank
    weights = 1.0 - torch.abs(m - torch.arange(2 * m - 1, dtype=like.dtype, **kw) - 1) / m
    on_src = torch.full((), (1.0 - smoothing) / m + off, dtype=like.dtype, **kw)  # no H2D copy
    on_mix = (1.0 - smoothing) * weights / m + off  # [2m - 1]
    return (_soft_one_hot(src_cols, on_src, num_classes, off, accumulate),
            _soft_one_hot(mix_cols, on_mix, num_classes, off, accumulate))


def _gather_keys(k: Tensor) -> Tensor:
    """norm(k) from every rank, as constants: [B, D] -> [B W, D]."""
    return dist.gather_no_grad(F.normalize(upcast(k), dim=-1), dim=0)


def _logits(q: Tensor, k_global: Tensor, temperature: float) -> Tensor:
    """norm(q) k_global^T / T: q [B, D] unnormalised, k_global [N, D] normalised and gathered."""
    return F.normalize(upcast(q), dim=-1) @ k_global.T / temperature  # [B, N]


def _soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    """timm's SoftTargetCrossEntropy: mean_b sum_c -target_bc log_softmax(logits)_bc."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def soft_contrastive(q: Tensor, k: Tensor, target: Tensor, temperature: float) -> Tensor:
    """mean_b sum_c -target_bc log_softmax(norm(q) norm(gather(k))^T / T)_bc, no 2T factor.

    Shapes: q [B, D] (grad), k [B, D] (gathered over ranks without gradient), target [B, B W].
    """
    return _soft_ce(_logits(q, _gather_keys(k), temperature), target)


def _patchmix_terms(q1: Tensor, k1: Tensor, k2: Tensor, mk1: Tensor, mq2: Tensor,
                    temperature: float, smoothing: float = 0.1, local_q: Tensor | None = None,
                    local_mq: Tensor | None = None, *, m: int = 2, mix_smoothing: float = 0.0,
                    accumulate: bool = False, mixed: Tensor | None = None
                    ) -> tuple[dict[str, Tensor], Tensor]:
    """The weighted terms of the PatchMix loss and the q1 -> k2 top-1 accuracy.

    Shapes: q1, k1, k2, mk1, mq2 [B, D]; local_q, local_mq [C, B, D] or None. Keys are constants.
    smoothing: eps of the original-to-original (and multi-crop) identity targets; 0.1 officially.
    m, mix_smoothing: images per mix and the mixed targets' smoothing (2 and 0.0 officially).
    accumulate: add repeated target columns instead of overwriting them (differs if B < 2m - 1).
    mixed: optional 0-d bool; False gives the mixed terms identity targets (an unmixed step).
    """
    batch, like = q1.shape[0], upcast(q1)
    identity, _ = patchmix_targets(batch, 1, smoothing, like)  # I_eps: the official no_mixer
    y_mix, y_mixmix = patchmix_targets(batch, m, mix_smoothing, like, accumulate)
    if mixed is not None:  # an unmixed step (mix_p < 1) has the targets of m = 1
        y_plain, _ = patchmix_targets(batch, 1, mix_smoothing, like)
        y_mix, y_mixmix = torch.where(mixed, y_mix, y_plain), torch.where(mixed, y_mixmix, y_plain)
    k1, k2, mk1 = _gather_keys(k1), _gather_keys(k2), _gather_keys(mk1)  # [B W, D] each
    src_logits = _logits(q1, k2, temperature)
    terms = {"src": _soft_ce(src_logits, identity),
             "mix": _soft_ce(_logits(mq2, k1, temperature), y_mix) / 2.0,
             "mixmix": _soft_ce(_logits(mq2, mk1, temperature), y_mixmix) / 2.0}
    if local_q is not None and local_q.shape[0] > 0:
        terms.update(_multicrop_terms(local_q, local_mq, k1, k2, identity, y_mix, temperature))
    labels = torch.arange(batch, device=q1.device) + batch * dist.get_rank()
    return terms, accuracy(src_logits, labels)


def _multicrop_terms(local_q: Tensor, local_mq: Tensor | None, k1: Tensor, k2: Tensor,
                     identity: Tensor, y_mix: Tensor, temperature: float) -> dict[str, Tensor]:
    """Local crops against both gathered global keys, plain and mixed, each sum divided by C."""
    if local_mq is None or local_mq.shape[0] != local_q.shape[0]:
        raise ValueError("local_mq must hold one mixed query per local crop")
    plain1 = plain2 = mixed1 = mixed2 = 0.0  # summed crop by crop, in the official order
    for crop, mixed_crop in zip(local_q, local_mq, strict=True):
        plain1 = plain1 + _soft_ce(_logits(crop, k1, temperature), identity)
        plain2 = plain2 + _soft_ce(_logits(crop, k2, temperature), identity)
        mixed1 = mixed1 + _soft_ce(_logits(mixed_crop, k1, temperature), y_mix)
        mixed2 = mixed2 + _soft_ce(_logits(mixed_crop, k2, temperature), y_mix)
    crops = local_q.shape[0]
    return {"multi": (plain1 + plain2) / crops, "multi_mix": (mixed1 + mixed2) / crops}


def _total(terms: dict[str, Tensor]) -> Tensor:
    """Sum in the official order: src + mix + mixmix + multi + multi_mix."""
    total = terms["src"]
    for name in ("mix", "mixmix", "multi", "multi_mix"):
        if name in terms:
            total = total + terms[name]
    return total


class PatchMixLoss(ContrastiveLoss):
    """PatchMix objective over the outputs of models.patchmix.PatchMixMoCo (see module docstring).

    Args:
        temperature: softmax temperature T (0.2 in every official config).
        smoothing: label smoothing of the original-to-original targets (0.1, the official code's
            hidden default, docs/methods.md §9.6-6; 0 gives plain one-hot targets).
        m: images per mixed image; must equal the builder's mix_num (2 officially).
        mix_smoothing: label smoothing of the mixed targets (the config's ``smoothing``, 0.0).
        accumulate: sum repeated target columns (differs from the official only if B < 2m - 1).

    Metrics: the src, mix and mixmix terms (mix and mixmix already halved) and acc, the top-1
    accuracy of q1 against the gathered k2.
    """

    def __init__(self, temperature: float = 0.2, smoothing: float = 0.1, m: int = 2,
                 mix_smoothing: float = 0.0, accumulate: bool = False):
        super().__init__()
        self.temperature, self.smoothing, self.m = temperature, smoothing, m
        self.mix_smoothing, self.accumulate = mix_smoothing, accumulate

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        p, k = check_views(out.p, out.k)
        p_mix, k_mix = check_views(out.extras.get("p_mix"), out.extras.get("k_mix"))
        if k.shape[0] != 2 or k_mix.shape[0] != 1 or p_mix.shape[:2] != p.shape[:2]:
            raise ValueError("PatchMix expects k [2, B, D], k_mix [1, B, D], p_mix shaped as p")
        terms, acc = _patchmix_terms(
            p[0], k[0], k[1], k_mix[0], p_mix[0], self.temperature, self.smoothing,
            p[1:], p_mix[1:], m=self.m, mix_smoothing=self.mix_smoothing,
            accumulate=self.accumulate, mixed=out.extras.get("mixed"))
        metrics = {name: terms[name].detach() for name in ("src", "mix", "mixmix")}
        metrics["acc"] = acc
        return LossOutput(_total(terms), metrics)


__all__ = ["soft_contrastive", "patchmix_targets", "PatchMixLoss"]
