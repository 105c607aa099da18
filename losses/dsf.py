r"""DSF: divergence-based similarity between the von Mises-Fisher fits of two sets of ns crops.

Each image's ns crops on one side give a vMF fit (mu, kappa, R); the logit between query set i and
key set j is minus their KL divergence, with log I_v from the Debye expansion (DLMF 10.41, m = 3):

    s_ij = -[v log(k_i/k_j) + v(eta_j - eta_i) + 1/4 log((1+z_i^2)/(1+z_j^2)) +- log(S_j/S_i)
             + R_i (k_i - k_j mu_i^T mu_j)] / kld_t,      v = D/2 - 1,  z = k / v
    L = CE(s(q1, k2), diag) + CE(s(q2, k1), diag)      (MoCo v2 form: CE([s_ii | s_i,queue], 0))

Source: Jeon789/DSF ``utils/models/dsf.py`` (``DSF_KLD_MoCov3``, ``DSF_KLD``), ``mocov3.py``
(``MoCo_DSF.contrastive_loss``), ``mocov2_cifar.py`` (``ModelMoCo_DSF.contrastive_loss``).
Reads: out.p [2 ns, B, D] (online outputs, grad) and out.k [2 ns, B, D] (momentum keys), side-major.
The vMF terms are computed in float32 (float64 stays float64) with autocast off, as R -> 1 makes
kappa large and half precision cannot hold the 1e-8 clamp (docs/methods.md §5.6-4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from losses.memory import FeatureQueue
from utils import dist

ONE_MINUS_R2_MIN = 1e-8  # the official clamp on 1 - R^2: bounds kappa as R -> 1
# kappa ~ R when the crops cancel out (R -> 0): log(kappa) and log(z) would be log(0) = -inf.
# Not in the official code; it changes no value above 1e-12 (never reached by real crops).
KAPPA_MIN = 1e-12
_SIGNS = {"official": -1.0, "correct": 1.0}


def _sign(bessel_sign: str) -> float:
    if bessel_sign not in _SIGNS:
        raise ValueError(f"bessel_sign must be 'official' or 'correct', got {bessel_sign!r}")
    return _SIGNS[bessel_sign]


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    """float32 for half inputs (AMP), else the widest input dtype."""
    dtype = upcast(xs[0]).dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, upcast(x).dtype)
    return dtype


def vmf_params(x: Tensor, r_bar_coeff: float = 0.95,
               kappa_normalization: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """vMF fit of each image's ns crops (Banerjee's kappa approximation).

    Shapes: x [ns, B, D] (unnormalised) -> mu [B, D], kappa [B], r_bar [B].
    """
    dim = x.shape[-1]
    x_bar = F.normalize(x, dim=-1).mean(0)  # [B, D] mean of the unit crops
    r_bar = x_bar.norm(dim=-1) * r_bar_coeff  # [B], scaled so that R <= r_bar_coeff
    mu = F.normalize(x_bar, dim=-1)
    kappa = r_bar * (dim - r_bar**2) / (1 - r_bar**2).clamp_min(ONE_MINUS_R2_MIN)
    if kappa_normalization:
        kappa = kappa / dim
    return mu, kappa.clamp_min(KAPPA_MIN), r_bar


def _debye(kappa: Tensor, v: float) -> tuple[Tensor, Tensor, Tensor]:
    """(eta, z, S) of log I_v(kappa) ~ v eta - 1/2 log(2 pi v) - 1/4 log(1 + z^2) + log S."""
    z = kappa / v
    root = torch.sqrt(1 + z**2)
    eta = root + torch.log(z / (1 + root))
    p = torch.pow(1 + z**2, -0.5)
    u = (torch.ones_like(p),
         (3 * p - 5 * p**3) / 24,
         (81 * p**2 - 462 * p**4 + 385 * p**6) / 1152,
         (30375 * p**3 - 369603 * p**5 + 765765 * p**7 - 425425 * p**9) / 414720)
    s = sum(u_m / v**m for m, u_m in enumerate(u))
    return eta, z, s


def _kl_terms(kx: Tensor, ky: Tensor, cos: Tensor, apk: Tensor, v: float,
              sign: float) -> tuple[Tensor, Tensor, Tensor]:
    """T1, T2, T3 of KL(vMF(mu_x, kx) || vMF(mu_y, ky)); every input broadcasts to cos's shape."""
    eta_x, z_x, s_x = _debye(kx, v)
    eta_y, z_y, s_y = _debye(ky, v)
    t1 = v * torch.log(kx / ky)
    t2 = (v * (eta_y - eta_x) + 0.25 * torch.log((1 + z_x**2) / (1 + z_y**2))
          + sign * torch.log(s_y / s_x))
    t3 = apk * (kx - ky * cos)  # A_D(kx) approximated by R_x (apk)
    return torch.broadcast_tensors(t1, t2, t3)  # type: ignore[return-value]


def _pair_terms(q: Tensor, k: Tensor, r_bar_coeff: float, kappa_normalization: bool,
                bessel_sign: str) -> tuple[tuple[Tensor, Tensor, Tensor], dict[str, Tensor]]:
    """All-pairs KL terms, each [B, M], and the vMF parameters behind them."""
    sign, dtype = _sign(bessel_sign), _compute_dtype(q, k)
    with torch.autocast(q.device.type, enabled=False):
        mu_x, kx, rx = vmf_params(q.to(dtype), r_bar_coeff, kappa_normalization)  # [B, D], [B]
        mu_y, ky, _ = vmf_params(k.to(dtype), r_bar_coeff, kappa_normalization)  # [M, D], [M]
        v = q.shape[-1] / 2 - 1
        terms = _kl_terms(kx[:, None], ky[None, :], mu_x @ mu_y.T, rx[:, None], v, sign)
    return terms, {"kappa_q": kx, "kappa_k": ky, "r_bar": rx, "mu_k": mu_y}


def dsf_logits(q: Tensor, k: Tensor, r_bar_coeff: float = 0.95, kappa_normalization: bool = True,
               kld_t: float = 1.0, bessel_sign: str = "official") -> Tensor:
    """-KL(X_i || Y_j) / kld_t for every query set i and key set j (MoCo v3 DSF).

    bessel_sign="official" copies ``DSF_KLD_MoCov3``'s ``- log(S_Y/S_X)`` in T2; "correct" uses
    ``+ log(S_Y/S_X)``, the sign the Debye expansion gives (docs/methods.md §5.6-1). The two logits
    differ by 2 log(S_Y/S_X) / kld_t, small since S = 1 + O(1/v). k is used as given (no gather).

    Shapes: q [ns, B, D], k [ns, M, D] (unnormalised) -> logits [B, M].
    """
    (t1, t2, t3), _ = _pair_terms(q, k, r_bar_coeff, kappa_normalization, bessel_sign)
    return -(t1 + t2 + t3) / kld_t


def _metrics(t: tuple[Tensor, Tensor, Tensor], params: dict[str, Tensor], acc: Tensor,
             ) -> dict[str, Tensor]:
    """Per-term means name the culprit when the loss turns non-finite."""
    out = {"acc": acc, "t1": t[0].mean(), "t2": t[1].mean(), "t3": t[2].mean()}
    out.update({k: params[k].mean() for k in ("kappa_q", "kappa_k", "r_bar")})
    return {k: v.detach().float() for k, v in out.items()}


def _dsf_direction(q: Tensor, k: Tensor, r_bar_coeff: float, kappa_normalization: bool,
                   kld_t: float, bessel_sign: str) -> tuple[Tensor, dict[str, Tensor]]:
    k = dist.gather_no_grad(k, dim=1)  # [ns, W*B, D]: other ranks' key sets are negatives
    t, params = _pair_terms(q, k, r_bar_coeff, kappa_normalization, bessel_sign)
    logits = -(t[0] + t[1] + t[2]) / kld_t  # [B, W*B]
    batch = q.shape[1]
    labels = torch.arange(batch, device=q.device) + batch * dist.get_rank()
    return F.cross_entropy(logits, labels), _metrics(t, params, accuracy(logits, labels))


def dsf_loss(q: Tensor, k: Tensor, r_bar_coeff: float = 0.95, kappa_normalization: bool = True,
             kld_t: float = 1.0, bessel_sign: str = "official") -> Tensor:
    """One direction: CE_mean(dsf_logits(q, gathered k), arange(B) + B rank). No 2T factor.

    Shapes: q [ns, B, D] (grad), k [ns, B, D] (gathered over ranks without gradient) -> scalar.
    """
    return _dsf_direction(q, k, r_bar_coeff, kappa_normalization, kld_t, bessel_sign)[0]


def _queue_terms(q: Tensor, k: Tensor, queue: Tensor, r_bar_coeff: float,
                 kappa_normalization: bool, bessel_sign: str,
                 ) -> tuple[tuple[Tensor, Tensor, Tensor], dict[str, Tensor]]:
    """KL terms [B, 1 + K]: column 0 is KL(X_i || Y_i), column 1 + k is KL(X_i || Z_k)."""
    sign, dtype = _sign(bessel_sign), _compute_dtype(q, k)
    with torch.autocast(q.device.type, enabled=False):
        mu_x, kx, rx = vmf_params(q.to(dtype), r_bar_coeff, kappa_normalization)  # [B, D], [B]
        # keys are constants, as under the official no_grad key encoder
        mu_y, ky, _ = vmf_params(k.detach().to(dtype), r_bar_coeff, kappa_normalization)
        # one kappa for every queue entry: the batch mean of all kappas, as a constant; the mean
        # over ranks so that a sharded batch scores as the whole batch does on one process
        kz = dist.all_reduce_mean(torch.cat([kx, ky]).mean())
        apk = rx if q.shape[0] > 1 else torch.ones_like(rx)  # the official APK(): 1 when ns = 1
        v = q.shape[-1] / 2 - 1
        pos = _kl_terms(kx, ky, (mu_x * mu_y).sum(-1), apk, v, sign)  # each [B]
        neg = _kl_terms(kx[:, None], kz, mu_x @ queue.to(dtype).T, apk[:, None], v, sign)  # [B, K]
        terms = tuple(torch.cat([a[:, None], b], dim=1) for a, b in zip(pos, neg, strict=True))
    return terms, {"kappa_q": kx, "kappa_k": ky, "r_bar": rx, "mu_k": mu_y}  # type: ignore


def dsf_queue_logits(q: Tensor, k: Tensor, queue: Tensor, r_bar_coeff: float = 0.95,
                     kappa_normalization: bool = True, kld_t: float = 1.0,
                     bessel_sign: str = "correct") -> Tensor:
    """-[KL(X_i || Y_i) | KL(X_i || Z_k)] / kld_t, the MoCo v2 CIFAR DSF logits (``DSF_KLD``).

    The queue holds unit mean directions mu_Z; every kappa_Z is the detached mean of the batch's
    kappa^X and kappa^Y; T3 is scaled by R^X if ns > 1 else by 1. This variant's official code uses
    ``+ log(S_Y/S_X)``, i.e. bessel_sign="correct" (the default here); "official" means the
    MoCo v3 variant's minus sign, for ablations. Label 0 is the positive.

    Shapes: q [ns, B, D], k [ns, B, D] (unnormalised), queue [K, D] -> logits [B, 1 + K].
    """
    t, _ = _queue_terms(q, k, queue, r_bar_coeff, kappa_normalization, bessel_sign)
    return -(t[0] + t[1] + t[2]) / kld_t


class DSFLoss(ContrastiveLoss):
    """MoCo v3 DSF: dsf_loss(p[:ns], k[ns:]) + dsf_loss(p[ns:], k[:ns]), ns = V / 2.

    Reads out.p [2 ns, B, D] (online predictor outputs; first ns rows = branch 1) and
    out.k [2 ns, B, D] (momentum keys, same layout). Metrics: acc, kappa_q, kappa_k, r_bar, t1-t3.
    """

    def __init__(self, r_bar_coeff: float = 0.95, kappa_normalization: bool = True,
                 kld_t: float = 1.0, bessel_sign: str = "official"):
        super().__init__()
        _sign(bessel_sign)
        self.options = dict(r_bar_coeff=r_bar_coeff, kappa_normalization=kappa_normalization,
                            kld_t=kld_t, bessel_sign=bessel_sign)

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        p, k = check_views(out.p, out.k)
        if p.shape[0] != k.shape[0] or p.shape[0] % 2:
            raise ValueError(f"DSF needs p and k of 2 x ns views, got {p.shape[0]} and "
                             f"{k.shape[0]}")
        ns = p.shape[0] // 2
        loss12, m12 = _dsf_direction(p[:ns], k[ns:], **self.options)
        loss21, m21 = _dsf_direction(p[ns:], k[:ns], **self.options)
        return LossOutput(loss12 + loss21, {n: (m12[n] + m21[n]) / 2 for n in m12})


class DSFQueueLoss(ContrastiveLoss):
    """MoCo v2 CIFAR DSF: CE([-KL(X_i||Y_i) | -KL(X_i||Z_k)] / kld_t, 0), queue of mean directions.

    symmetric=False (official default): out.p [ns, B, D] holds the query crops (branch 1) and out.k
    [ns, B, D] the key crops (branch 2), the layout ``MoCoV2CIFAR(symmetric=False)`` emits.
    symmetric=True: p and k are [2 ns, B, D] side-major; the loss is the sum of both directions,
    each against the same queue snapshot. The key mean directions mu^Y are enqueued after the loss
    (training mode only), [branch 1 keys, branch 2 keys] when symmetric, as the official code does.
    """

    def __init__(self, queue_size: int = 4096, dim: int = 128, r_bar_coeff: float = 0.95,
                 kappa_normalization: bool = True, kld_t: float = 1.0,
                 bessel_sign: str = "correct", symmetric: bool = False):
        super().__init__()
        _sign(bessel_sign)
        self.queue = FeatureQueue(queue_size, dim)  # random unit rows, gathered before enqueue
        self.symmetric, self.kld_t = symmetric, kld_t
        self.options = dict(r_bar_coeff=r_bar_coeff, kappa_normalization=kappa_normalization,
                            bessel_sign=bessel_sign)

    def _direction(self, q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, dict, Tensor]:
        t, params = _queue_terms(q, k, queue, **self.options)
        logits = -(t[0] + t[1] + t[2]) / self.kld_t  # [B, 1 + K]
        labels = torch.zeros(q.shape[1], dtype=torch.long, device=q.device)
        metrics = _metrics(t, params, accuracy(logits, labels))
        return F.cross_entropy(logits, labels), metrics, params["mu_k"]

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        p, k = check_views(out.p, out.k)
        if p.shape[0] != k.shape[0] or (self.symmetric and p.shape[0] % 2):
            raise ValueError(f"DSFQueueLoss(symmetric={self.symmetric}) got {p.shape[0]} query and "
                             f"{k.shape[0]} key views: check the builder's symmetric flag")
        queue = self.queue.snapshot()  # every direction sees the queue before this step's keys
        if self.symmetric:
            ns = p.shape[0] // 2
            loss12, m12, mu2 = self._direction(p[:ns], k[ns:], queue)
            loss21, m21, mu1 = self._direction(p[ns:], k[:ns], queue)
            loss, metrics = loss12 + loss21, {n: (m12[n] + m21[n]) / 2 for n in m12}
            keys = [mu1, mu2]  # branch 1's key directions first, as the official cat([k1, k2])
        else:
            loss, metrics, mu2 = self._direction(p, k, queue)
            keys = [mu2]
        if self.training:
            for mu in keys:  # one enqueue each: under DDP, [mu1 of all ranks, mu2 of all ranks]
                self.queue.enqueue(mu)
        return LossOutput(loss, metrics)


__all__ = ["vmf_params", "dsf_logits", "dsf_loss", "dsf_queue_logits", "DSFLoss", "DSFQueueLoss"]
