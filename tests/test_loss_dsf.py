"""DSF (losses/dsf.py) against a naive per-pair loop written from docs/methods.md §5.2-5.3 (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo

from losses.base import ViewOutputs
from losses.dsf import DSFLoss, DSFQueueLoss, dsf_logits, dsf_loss, dsf_queue_logits, vmf_params
from losses.mocov2 import mocov2_loss

# ---------------------------------------------------------------- naive reference (python loops)


def naive_vmf(crops: list[torch.Tensor], c: float, normalize_kappa: bool):
    """(mu, kappa, R) of one image's crops, one float at a time (docs/methods.md §5.2 steps 1-2)."""
    dim = crops[0].numel()
    mean = sum(x / x.norm() for x in crops) / len(crops)
    r = float(mean.norm()) * c
    kappa = r * (dim - r * r) / max(1 - r * r, 1e-8)
    return mean / mean.norm(), kappa / dim if normalize_kappa else kappa, r


def naive_debye(kappa: float, v: float) -> tuple[float, float, float]:
    """(eta, z, S) of DLMF 10.41 with m = 3."""
    z = kappa / v
    eta = math.sqrt(1 + z * z) + math.log(z / (1 + math.sqrt(1 + z * z)))
    p = 1 / math.sqrt(1 + z * z)
    u1 = (3 * p - 5 * p**3) / 24
    u2 = (81 * p**2 - 462 * p**4 + 385 * p**6) / 1152
    u3 = (30375 * p**3 - 369603 * p**5 + 765765 * p**7 - 425425 * p**9) / 414720
    return eta, z, 1 + u1 / v + u2 / v**2 + u3 / v**3


def naive_kl(x, y, v: float, sign: float, apk: float) -> float:
    """T1 + T2 + T3 for one (query set, key set) pair."""
    (mu_x, kx, _), (mu_y, ky, _) = x, y
    eta_x, z_x, s_x = naive_debye(kx, v)
    eta_y, z_y, s_y = naive_debye(ky, v)
    t1 = v * math.log(kx / ky)
    t2 = v * (eta_y - eta_x) + 0.25 * math.log((1 + z_x**2) / (1 + z_y**2)) \
        + sign * math.log(s_y / s_x)
    t3 = apk * (kx - ky * float(mu_x @ mu_y))
    return t1 + t2 + t3


def sets(x: torch.Tensor, c: float, norm: bool) -> list:
    """[ns, B, D] -> B naive vMF fits."""
    return [naive_vmf(list(x[:, b]), c, norm) for b in range(x.shape[1])]


def naive_logits(q, k, c=0.95, norm=True, kld_t=1.0, sign=-1.0) -> torch.Tensor:
    v = q.shape[-1] / 2 - 1
    xs, ys = sets(q, c, norm), sets(k, c, norm)
    return torch.tensor([[-naive_kl(x, y, v, sign, apk=x[2]) / kld_t for y in ys] for x in xs],
                        dtype=torch.float64)


def naive_queue_logits(q, k, queue, c=0.95, norm=True, kld_t=1.0, sign=1.0) -> torch.Tensor:
    v = q.shape[-1] / 2 - 1
    xs, ys = sets(q, c, norm), sets(k, c, norm)
    kappa_z = sum(s[1] for s in xs + ys) / (2 * len(xs))
    rows = []
    for x, y in zip(xs, ys, strict=True):
        apk = x[2] if q.shape[0] > 1 else 1.0
        row = [naive_kl(x, y, v, sign, apk)]
        row += [naive_kl(x, (z, kappa_z, None), v, sign, apk) for z in queue]
        rows.append([-r / kld_t for r in row])
    return torch.tensor(rows, dtype=torch.float64)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def correlated(ns: int, batch: int, dim: int, noise: float = 0.5) -> torch.Tensor:
    """Crops of one image share a direction, so R and kappa are far from 0."""
    return rand(1, batch, dim) + noise * rand(ns, batch, dim)


# ---------------------------------------------------------------- logits vs the naive loop


@pytest.mark.parametrize("bessel_sign,sign", [("official", -1.0), ("correct", 1.0)])
@pytest.mark.parametrize("norm", [True, False])
def test_dsf_logits_match_naive_loop(bessel_sign, sign, norm):
    q, k = correlated(3, 4, 16), correlated(3, 5, 16)
    got = dsf_logits(q, k, r_bar_coeff=0.9, kappa_normalization=norm, kld_t=0.5,
                     bessel_sign=bessel_sign)
    want = naive_logits(q, k, c=0.9, norm=norm, kld_t=0.5, sign=sign)
    assert got.shape == (4, 5) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_signs_differ_by_two_log_s_ratio():
    q, k = correlated(4, 3, 32), correlated(4, 6, 32)
    diff = dsf_logits(q, k, bessel_sign="official") - dsf_logits(q, k, bessel_sign="correct")
    v = 32 / 2 - 1
    s_x = [naive_debye(s[1], v)[2] for s in sets(q, 0.95, True)]
    s_y = [naive_debye(s[1], v)[2] for s in sets(k, 0.95, True)]
    want = torch.tensor([[2 * math.log(sy / sx) for sy in s_y] for sx in s_x], dtype=torch.float64)
    torch.testing.assert_close(diff, want, rtol=1e-9, atol=1e-12)
    assert diff.abs().max() > 0  # the two signs really differ


def test_correct_sign_is_the_exact_vmf_kl():
    """With + log(S_Y/S_X), T1 + T2 is log C_D(k_x) - log C_D(k_y) up to the O(v^-4) Debye error."""
    special = pytest.importorskip("scipy.special")
    dim = 128
    v = dim / 2 - 1
    q, k = correlated(4, 3, dim, noise=0.3), correlated(4, 3, dim, noise=0.3)
    _, kx, _ = vmf_params(q, kappa_normalization=False)
    _, ky, _ = vmf_params(k, kappa_normalization=False)

    def log_c(kappa: float) -> float:  # log C_D without the constant (2 pi)^{D/2}
        return v * math.log(kappa) - (math.log(special.ive(v, kappa)) + kappa)

    exact = torch.tensor([[log_c(a) - log_c(b) for b in ky.tolist()] for a in kx.tolist()],
                         dtype=torch.float64)
    for sign, tol in (("correct", 1e-6), ("official", None)):
        logits = dsf_logits(q, k, kappa_normalization=False, bessel_sign=sign)
        _, _, rx = vmf_params(q, kappa_normalization=False)
        mu_x, _, _ = vmf_params(q, kappa_normalization=False)
        mu_y, _, _ = vmf_params(k, kappa_normalization=False)
        t3 = rx[:, None] * (kx[:, None] - ky[None, :] * (mu_x @ mu_y.T))
        t12 = -logits - t3
        if tol is not None:
            torch.testing.assert_close(t12, exact, rtol=0, atol=tol)
        else:
            assert (t12 - exact).abs().max() > 1e-5  # the official sign is off by 2 log(S_Y/S_X)


def test_bad_sign_raises():
    with pytest.raises(ValueError, match="bessel_sign"):
        dsf_logits(rand(2, 2, 4), rand(2, 2, 4), bessel_sign="plus")


# ---------------------------------------------------------------- vMF closed forms


@pytest.mark.parametrize("norm", [True, False])
def test_vmf_params_equal_crops(norm):
    """Crops of an image all point one way: R = r_bar_coeff, kappa = c (D - c^2) / (1 - c^2)."""
    dim, c = 8, 0.9
    base = rand(5, dim)
    x = base[None] * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)[:, None, None]  # [3,5,D]
    mu, kappa, r = vmf_params(x, r_bar_coeff=c, kappa_normalization=norm)
    want = c * (dim - c**2) / (1 - c**2) / (dim if norm else 1)
    torch.testing.assert_close(r, torch.full((5,), c, dtype=torch.float64))
    torch.testing.assert_close(kappa, torch.full((5,), want, dtype=torch.float64))
    torch.testing.assert_close(mu, F.normalize(base, dim=-1))


def test_vmf_params_one_crop_gives_r_bar_coeff():
    _, kappa, r = vmf_params(rand(1, 7, 16), r_bar_coeff=0.95)
    torch.testing.assert_close(r, torch.full((7,), 0.95, dtype=torch.float64))
    assert torch.allclose(kappa, kappa[0].expand(7))


def test_ns1_logits_are_a_scaled_cosine():
    """ns = 1: every kappa is equal, T1 = T2 = 0, and the logit is -c kappa (1 - cos)."""
    q, k = rand(1, 4, 16), rand(1, 6, 16)
    c = 0.95
    kappa = c * (16 - c**2) / (1 - c**2) / 16
    cos = F.normalize(q[0], dim=-1) @ F.normalize(k[0], dim=-1).T
    for sign in ("official", "correct"):
        torch.testing.assert_close(dsf_logits(q, k, bessel_sign=sign), -c * kappa * (1 - cos))


# ---------------------------------------------------------------- the loss


def test_dsf_loss_is_ce_over_naive_logits():
    q, k = correlated(3, 5, 16), correlated(3, 5, 16)
    want = F.cross_entropy(naive_logits(q, k, kld_t=2.0), torch.arange(5))
    torch.testing.assert_close(dsf_loss(q, k, kld_t=2.0), want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("ns", [1, 8])
def test_dsf_module_sums_two_directions(ns):
    p, k = correlated(2 * ns, 6, 16), correlated(2 * ns, 6, 16)
    out = DSFLoss(r_bar_coeff=0.9)(ViewOutputs(p=p, k=k))
    want = dsf_loss(p[:ns], k[ns:], r_bar_coeff=0.9) + dsf_loss(p[ns:], k[:ns], r_bar_coeff=0.9)
    torch.testing.assert_close(out.loss, want)
    assert set(out.metrics) == {"acc", "kappa_q", "kappa_k", "r_bar", "t1", "t2", "t3"}
    for value in out.metrics.values():
        assert value.dim() == 0 and not value.requires_grad and torch.isfinite(value)


def test_dsf_rejects_odd_view_count():
    with pytest.raises(ValueError, match="2 x ns"):
        DSFLoss()(ViewOutputs(p=rand(3, 4, 8), k=rand(3, 4, 8)))


def test_gradient_reaches_p_not_k():
    p = correlated(8, 6, 16).requires_grad_()
    k = correlated(8, 6, 16).requires_grad_()
    DSFLoss()(ViewOutputs(p=p, k=k)).loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert k.grad is None


def test_batch_permutation_invariance():
    p, k = correlated(4, 6, 16), correlated(4, 6, 16)
    perm = torch.randperm(6)
    a = DSFLoss()(ViewOutputs(p=p, k=k)).loss
    b = DSFLoss()(ViewOutputs(p=p[:, perm], k=k[:, perm])).loss
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("norm", [True, False])
def test_large_kappa_and_r_to_one_stay_finite(norm):
    """r_bar_coeff = 1 with identical crops: R = 1, 1 - R^2 hits the 1e-8 clamp (float32)."""
    base = torch.randn(1, 6, 64)
    p = base.repeat(8, 1, 1).requires_grad_()
    k = (base + 1e-3 * torch.randn(8, 6, 64))
    out = DSFLoss(r_bar_coeff=1.0, kappa_normalization=norm)(ViewOutputs(p=p, k=k))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(p.grad).all()
    assert out.metrics["kappa_q"] > 1e4


def test_cancelling_crops_kappa_zero_stays_finite():
    """Antipodal crops: the mean is 0, so R = kappa = 0; the KAPPA_MIN guard keeps logs finite."""
    x = torch.randn(1, 4, 16)
    p = torch.cat([x, -x, x, -x]).requires_grad_()  # branch 1 crops cancel, branch 2 too
    out = DSFLoss()(ViewOutputs(p=p, k=torch.randn(4, 4, 16)))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_upcast(dtype):
    p, k = correlated(4, 4, 16).to(dtype), correlated(4, 4, 16).to(dtype)
    out = DSFLoss()(ViewOutputs(p=p, k=k))
    assert out.loss.dtype == torch.float32
    ref = DSFLoss()(ViewOutputs(p=p.float(), k=k.float())).loss
    torch.testing.assert_close(out.loss, ref)


def test_loss_decreases_under_sgd():
    p = correlated(4, 8, 16).requires_grad_()
    k = correlated(4, 8, 16)
    crit, opt = DSFLoss(), torch.optim.SGD([p], lr=0.5)
    first = None
    for _ in range(10):
        loss = crit(ViewOutputs(p=p, k=k)).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


# ---------------------------------------------------------------- MoCo v2 CIFAR variant (queue)


@pytest.mark.parametrize("ns", [1, 3])
@pytest.mark.parametrize("bessel_sign,sign", [("correct", 1.0), ("official", -1.0)])
def test_queue_logits_match_naive_loop(ns, bessel_sign, sign):
    q, k = correlated(ns, 4, 16), correlated(ns, 4, 16)
    queue = F.normalize(rand(7, 16), dim=-1)
    got = dsf_queue_logits(q, k, queue, r_bar_coeff=0.9, kld_t=0.7, bessel_sign=bessel_sign)
    want = naive_queue_logits(q, k, queue, c=0.9, kld_t=0.7, sign=sign)
    assert got.shape == (4, 8)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_queue_kappa_is_detached():
    q = correlated(2, 4, 16).requires_grad_()
    k = correlated(2, 4, 16)
    queue = F.normalize(rand(5, 16), dim=-1)
    # kappa_Z is the mean over the whole batch: were it not detached, row 0's logits would depend
    # on the other images' crops
    g = torch.autograd.grad(dsf_queue_logits(q, k, queue)[0].sum(), q)[0]  # [ns, B, D]
    assert g[:, 0].abs().sum() > 0 and torch.isfinite(g).all()
    assert torch.equal(g[:, 1:], torch.zeros_like(g[:, 1:]))


def test_queue_ns1_is_mocov2_infonce_at_temperature_one_over_kappa():
    """ns = 1: one kappa everywhere and APK = 1, so the CE is InfoNCE with T = 1/kappa."""
    q, k = rand(1, 6, 16), rand(1, 6, 16)
    queue = F.normalize(rand(9, 16), dim=-1)
    crit = DSFQueueLoss(queue_size=9, dim=16).double()
    crit.queue.bank.copy_(queue)
    c = 0.95
    kappa = c * (16 - c**2) / (1 - c**2) / 16
    torch.testing.assert_close(crit(ViewOutputs(p=q, k=k)).loss,
                               mocov2_loss(q[0], k[0], queue, temperature=1 / kappa))


def test_queue_module_enqueues_mean_directions():
    q, k = correlated(3, 4, 16), correlated(3, 4, 16)
    crit = DSFQueueLoss(queue_size=8, dim=16).double()
    before = crit.queue.bank.clone()
    out = crit(ViewOutputs(p=q, k=k))
    want = F.cross_entropy(naive_queue_logits(q, k, before), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(out.loss, want, rtol=1e-10, atol=0)
    mu_y, _, _ = vmf_params(k)
    torch.testing.assert_close(crit.queue.bank[:4], mu_y)
    torch.testing.assert_close(crit.queue.bank[4:], before[4:])
    assert int(crit.queue.ptr) == 4
    crit.eval()
    crit(ViewOutputs(p=q, k=k))
    assert int(crit.queue.ptr) == 4  # evaluation leaves the queue alone


def test_queue_symmetric_two_directions_and_enqueue_order():
    ns = 2
    p, k = correlated(2 * ns, 4, 16), correlated(2 * ns, 4, 16)
    crit = DSFQueueLoss(queue_size=16, dim=16, symmetric=True).double()
    queue = crit.queue.bank.clone()
    out = crit(ViewOutputs(p=p, k=k))
    zeros = torch.zeros(4, dtype=torch.long)
    want = (F.cross_entropy(naive_queue_logits(p[:ns], k[ns:], queue), zeros)
            + F.cross_entropy(naive_queue_logits(p[ns:], k[:ns], queue), zeros))
    torch.testing.assert_close(out.loss, want, rtol=1e-10, atol=0)
    # official order: torch.cat([k1, k2]) = branch 1 key directions first
    torch.testing.assert_close(crit.queue.bank[:4], vmf_params(k[:ns])[0])
    torch.testing.assert_close(crit.queue.bank[4:8], vmf_params(k[ns:])[0])


def test_queue_gradient_reaches_p_not_k():
    p = correlated(4, 4, 16).requires_grad_()
    k = correlated(4, 4, 16).requires_grad_()
    out = DSFQueueLoss(queue_size=8, dim=16).double()(ViewOutputs(p=p, k=k))
    out.loss.backward()
    assert p.grad.abs().sum() > 0 and k.grad is None
    assert set(out.metrics) >= {"acc", "kappa_q", "kappa_k", "r_bar", "t1", "t2", "t3"}


# ---------------------------------------------------------------- 2 processes == 1 process


def _gloo_dsf(rank, world_size, p, k, q2, k2, queue):
    half = p.shape[1] // world_size
    rows = slice(rank * half, (rank + 1) * half)
    p_local = p[:, rows].clone().requires_grad_()
    loss = DSFLoss()(ViewOutputs(p=p_local, k=k[:, rows])).loss
    loss.backward()
    q_local = q2[:, rows].clone().requires_grad_()
    crit = DSFQueueLoss(queue_size=queue.shape[0], dim=queue.shape[1]).double()
    crit.queue.bank.copy_(queue)
    queue_loss = crit(ViewOutputs(p=q_local, k=k2[:, rows])).loss
    queue_loss.backward()
    return (loss.detach(), p_local.grad, queue_loss.detach(), q_local.grad,
            crit.queue.bank.clone())


def test_two_processes_equal_one():
    p, k = correlated(4, 8, 16), correlated(4, 8, 16)
    q2, k2 = correlated(3, 8, 16), correlated(3, 8, 16)
    queue = F.normalize(rand(16, 16), dim=-1)
    results = run_gloo(_gloo_dsf, p, k, q2, k2, queue)

    p_full = p.clone().requires_grad_()
    loss = DSFLoss()(ViewOutputs(p=p_full, k=k)).loss
    loss.backward()
    q_full = q2.clone().requires_grad_()
    crit = DSFQueueLoss(queue_size=16, dim=16).double()
    crit.queue.bank.copy_(queue)
    queue_loss = crit(ViewOutputs(p=q_full, k=k2)).loss
    queue_loss.backward()

    world = len(results)
    torch.testing.assert_close(sum(r[0] for r in results) / world, loss.detach())
    torch.testing.assert_close(torch.cat([r[1] for r in results], dim=1) / world, p_full.grad)
    torch.testing.assert_close(sum(r[2] for r in results) / world, queue_loss.detach())
    torch.testing.assert_close(torch.cat([r[3] for r in results], dim=1) / world, q_full.grad)
    for r in results:  # every rank enqueued the whole batch's mean directions, in rank order
        torch.testing.assert_close(r[4], crit.queue.bank)
