"""RandAugment (DSF's CIFAR recipe, `ViewSpec.randaugment_p`) on both augmentation paths.

(a) specs without RandAugment keep their parameters and random stream; (b) every batched
RandAugment op equals torchvision's op per sample; (c) the sampled parameters have torchvision's
distribution; (d) the reference path holds RandomApply(RandAugment) exactly when p > 0. All seeded.
"""

import math
from dataclasses import replace

import pytest
import torch
from scipy import stats
from torchvision.transforms import v2

from data.batched import BatchMultiView, apply_params
from data.per_sample import MultiViewTransform, _reference_view
from data.randaugment import _RANDAUGMENT_OPS, _RANDAUGMENT_SPACE, randaugment
from data.view_params import sample_params
from data.views import ViewSpec

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity normalisation: outputs stay in [0, 1]
KS_P_MIN = 1e-3
NEAREST = v2.InterpolationMode.NEAREST
TV_SPACE = v2.RandAugment._AUGMENTATION_SPACE
_RA = v2.RandAugment()
# DSF's CIFAR view (train_moco_cifar_multiview.py), at 16 px to keep the tests fast
DSF = ViewSpec(16, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5, randaugment_p=0.5)
# only the crop (identity box) and RandAugment: isolates the RandAugment ops
RA_ONLY = ViewSpec(16, scale=(1, 1), ratio=(1, 1), flip_p=0.5, jitter_p=0, gray_p=0, blur_p=0,
                   randaugment_p=1.0, randaugment_ops=1)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """n colourful uint8 images [n, 3, size, size]: gradients plus noise, different per image."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, 1 - xx * yy])
    noise = torch.rand(n, 3, size, size, generator=g) * 0.3
    scale = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)  # varied ranges (autocontrast)
    return ((base * 0.7 + noise) * scale).clamp(0, 1).mul(255).round().to(torch.uint8)


def _tv_magnitude(name: str, negate: bool, h: int, w: int, magnitude: int = 9) -> float:
    """torchvision's signed magnitude of op `name` (RandAugment.forward)."""
    fn, signed = TV_SPACE[name]
    m = 0.0 if fn(31, h, w) is None else float(fn(31, h, w)[magnitude])
    return -m if signed and negate else m


def _tv_op(img: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's RandAugment op as RandAugment applies it (nearest, fill None)."""
    return _RA._apply_image_or_video_transform(img, name, magnitude, NEAREST, _RA._fill)


def _assert_rate(mask: torch.Tensor, p: float) -> None:
    n = mask.numel()
    sd = math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(mask.float().mean().item() - p) <= 5 * sd + 1e-12, (mask.float().mean(), p)


# ============ (a) no RandAugment: parameters and random stream unchanged ============


def test_no_randaugment_keeps_the_parameters_and_the_random_stream():
    """Golden values drawn with the code before RandAugment existed (generator seed 11)."""
    spec = ViewSpec(32, scale=(0.2, 1), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)
    assert spec.randaugment_p == 0.0
    g = torch.Generator().manual_seed(11)
    p = sample_params(spec, 8, 32, 32, g)
    assert p.top.tolist() == [10, 4, 5, 6, 0, 0, 3, 7]
    assert p.left.tolist() == [9, 4, 0, 2, 5, 2, 0, 6]
    assert p.height.tolist() == [20, 27, 22, 25, 21, 25, 26, 19]
    assert p.width.tolist() == [18, 28, 24, 28, 27, 28, 27, 22]
    assert p.flip.int().tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert p.jitter.int().tolist() == [0, 1, 1, 1, 1, 1, 0, 1]
    assert p.gray.int().tolist() == [1, 1, 0, 0, 0, 0, 0, 1]
    assert p.blur.int().tolist() == [0, 1, 0, 0, 1, 1, 0, 0]
    assert p.order[:3].tolist() == [[3, 0, 1, 2], [0, 3, 1, 2], [1, 3, 2, 0]]
    # the next draw of the generator is the one the old code left it at: no extra draw
    torch.testing.assert_close(
        torch.rand(3, generator=g), torch.tensor([0.6433, 0.6361, 0.6942]), rtol=0, atol=1e-4
    )
    # the RandAugment fields: an all-False mask and empty op tensors
    assert not p.randaugment.any() and p.randaugment.shape == (8,)
    assert p.randaugment_ops.shape == (8, 0) and p.randaugment_negate.shape == (8, 0)


def test_randaugment_draws_come_after_the_existing_ones():
    """Turning RandAugment on changes none of the other parameters of the same seed."""
    off = replace(DSF, randaugment_p=0.0)
    off = sample_params(off, 64, 20, 20, torch.Generator().manual_seed(5))
    on = sample_params(DSF, 64, 20, 20, torch.Generator().manual_seed(5))
    for field in off._fields[:12]:
        assert torch.equal(getattr(off, field), getattr(on, field)), field
    assert on.randaugment_ops.shape == (64, 2) and on.randaugment_negate.shape == (64, 2)


# ============ (b) batched ops == torchvision's ops, per sample ============


def test_op_table_is_torchvisions():
    assert _RANDAUGMENT_OPS == tuple(TV_SPACE)
    for name, (fn, signed) in _RANDAUGMENT_SPACE.items():
        tv_fn, tv_signed = TV_SPACE[name]
        assert signed == tv_signed, name
        for h, w in [(16, 16), (32, 32), (24, 40)]:
            ref = tv_fn(31, h, w)
            assert (fn is None) == (ref is None), name
            if fn is not None:
                assert torch.equal(fn(31, h, w), ref), (name, h, w)


# rounding of the reference (uint8, truncating blends) vs the fast path (float, no rounding)
_TOL_UINT8 = {"Brightness", "Color", "Contrast", "Sharpness", "AutoContrast"}


@pytest.mark.parametrize("name", _RANDAUGMENT_OPS)
def test_each_op_equals_torchvision_per_sample(name):
    """Forced op on 8 samples: both signs, flipped or not, one sample without RandAugment. The
    reference is torchvision's RandAugment op on the uint8 image, then the flip (the reference's
    order)."""
    n, op = 8, _RANDAUGMENT_OPS.index(name)
    x8 = _images(n)
    params = sample_params(RA_ONLY, n, 16, 16)._replace(
        flip=torch.tensor([False, False, True, True] * 2),
        randaugment=torch.tensor([True] * 7 + [False]),
        randaugment_ops=torch.full((n, 1), op),
        randaugment_negate=torch.tensor([[False], [True]] * 4),
    )
    out = apply_params(x8.float() / 255, RA_ONLY, params)
    ref = []
    for i in range(n):
        img = x8[i]
        if params.randaugment[i]:
            img = _tv_op(img, name, _tv_magnitude(name, bool(params.randaugment_negate[i]), 16, 16))
        ref.append(img.flip(-1) if params.flip[i] else img)
    diff = (out - torch.stack(ref).float() / 255).abs()
    assert torch.equal(diff[-1], torch.zeros_like(diff[-1]))  # no RandAugment: the input
    if name in _TOL_UINT8:
        assert diff.mean() < 1 / 255 and diff.max() < 1.5 / 255, (diff.mean() * 255, diff.max())
    else:  # geometric (nearest, fill 0), posterize, solarize, equalize: exact on uint8 inputs
        assert diff.max() < 1e-6, diff.max() * 255
    if name in _TOL_UINT8:  # and exactly torchvision's op on the float image
        for i in range(7):
            m = _tv_magnitude(name, bool(params.randaugment_negate[i]), 16, 16)
            exp = _tv_op(x8[i].float() / 255, name, m)
            exp = exp.flip(-1) if params.flip[i] else exp
            torch.testing.assert_close(out[i], exp, rtol=0, atol=1e-6)


def test_chained_ops_follow_each_samples_op_order():
    """2 random ops per sample on 96 samples: each sample equals its own ops applied in order with
    torchvision on the float image (posterize/equalize on the uint8-rounded image)."""
    n = 96
    g = torch.Generator().manual_seed(3)
    x = _images(n, seed=1).float() / 255
    spec = ViewSpec(16, randaugment_p=0.7, randaugment_ops=2)
    params = sample_params(spec, n, 16, 16, g)
    out = randaugment(x, params.randaugment, params.randaugment_ops,
                      params.randaugment_negate, 9)  # fmt: skip
    assert torch.equal(out[~params.randaugment], x[~params.randaugment])
    for i in range(n):
        ref = x[i]
        for k in range(2) if params.randaugment[i] else []:
            name = _RANDAUGMENT_OPS[params.randaugment_ops[i, k]]
            m = _tv_magnitude(name, bool(params.randaugment_negate[i, k]), 16, 16)
            if name in ("Posterize", "Equalize"):
                q = ref.mul(255).round().to(torch.uint8)
                ref = _tv_op(q, name, m).float() / 255
            else:
                ref = _tv_op(ref, name, m)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


# ============ (c) sampled parameters have torchvision's distribution ============


def test_randaugment_rate_op_choice_and_sign_distributions():
    torch.manual_seed(2)
    n = 14000
    params = sample_params(DSF, n, 16, 16)
    _assert_rate(params.randaugment, 0.5)
    ops, neg = params.randaugment_ops, params.randaugment_negate
    assert ops.min() >= 0 and ops.max() <= 13
    for k in range(2):  # each slot: uniform over the 14 ops (torch.randint(14))
        counts = torch.bincount(ops[:, k], minlength=14)
        assert stats.chisquare(counts.numpy()).pvalue > KS_P_MIN, counts
        _assert_rate(neg[:, k], 0.5)
    # the two slots are independent (196 pairs equally likely), and of the apply mask
    pairs = torch.bincount(ops[:, 0] * 14 + ops[:, 1], minlength=196)
    assert stats.chisquare(pairs.numpy()).pvalue > KS_P_MIN
    _assert_rate(params.randaugment & neg[:, 0], 0.25)


def _summaries(views: torch.Tensor) -> dict[str, torch.Tensor]:
    summaries = {
        "mean_r": views[:, 0].mean((1, 2)),
        "std": views.flatten(1).std(1),
        "grad": (views[..., 1:] - views[..., :-1]).abs().mean((1, 2, 3)),
        "dark": (views < 0.02).float().mean((1, 2, 3)),  # fill 0 of the geometric ops
    }
    return {k: (v * 1e4).round() / 1e4 for k, v in summaries.items()}


def test_fast_and_reference_randaugment_outputs_have_the_same_frequencies():
    """RandAugment alone (1 op, identity crop, flip): every output is one of 46 atoms (op, sign,
    flip) of the image; both paths hit each atom equally often (chi-square contingency test)."""
    n, img = 600, _images(1, seed=5)[0]
    atoms, tol_atom = [], []
    for name, (_, signed) in TV_SPACE.items():
        for negate in (False, True) if signed else (False,):
            out = _tv_op(img, name, _tv_magnitude(name, negate, 16, 16)).float() / 255
            atoms += [out, out.flip(-1)]
            tol_atom += [name in _TOL_UINT8] * 2
    atoms, tol_atom = torch.stack(atoms), torch.tensor(tol_atom)
    # the atoms the fast path only approximates (uint8 rounding) are far from all the others
    dist = (atoms[:, None] - atoms[None]).abs().mean((2, 3, 4)) + torch.eye(len(atoms))
    assert dist[tol_atom].min() > 1.5 / 255

    def classify(views: torch.Tensor, tol: float) -> torch.Tensor:
        d = (views[:, None] - atoms[None]).abs().mean((2, 3, 4))
        assert d.min(1).values.max() < tol
        return torch.bincount(d.argmin(1), minlength=len(atoms))

    torch.manual_seed(6)
    ref = torch.stack([MultiViewTransform([RA_ONLY], MEAN, STD)(img)[0] for _ in range(n)])
    fast = BatchMultiView([RA_ONLY], MEAN, STD)(img.unsqueeze(0).expand(n, -1, -1, -1))[0]
    table = torch.stack([classify(ref, 1e-5), classify(fast, 0.7 / 255)])
    table = table[:, table.sum(0) > 0]
    assert table.shape[1] == len(atoms)  # every (op, sign, flip) occurs
    assert stats.chi2_contingency(table.numpy()).pvalue > KS_P_MIN


def test_fast_and_reference_dsf_views_have_the_same_distribution():
    """DSF's whole CIFAR view; statistics far above the uint8 step (n = 400)."""
    n = 400
    img = _images(1, seed=5)[0]
    torch.manual_seed(6)
    reference = MultiViewTransform([DSF], MEAN, STD)
    ref = torch.stack([reference(img)[0] for _ in range(n)])
    fast = BatchMultiView([DSF], MEAN, STD)(img.unsqueeze(0).expand(n, -1, -1, -1))[0]
    assert ref.shape == fast.shape
    ref_s, fast_s = _summaries(ref), _summaries(fast)
    for key in ref_s:
        p = stats.ks_2samp(ref_s[key].numpy(), fast_s[key].numpy()).pvalue
        assert p > KS_P_MIN, (key, p)


# ============ (d) the reference path and the spec ============


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_reference_path_has_randaugment_exactly_when_p_is_positive(p):
    spec = ViewSpec(32, scale=(0.2, 1), randaugment_p=p, randaugment_ops=3,
                    randaugment_magnitude=5)  # fmt: skip
    ops = _reference_view(spec, MEAN, STD).transforms
    found = [
        (i, t) for i, t in enumerate(ops)
        if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.RandAugment)
    ]  # fmt: skip
    assert len(found) == (1 if p > 0 else 0)
    assert not any(isinstance(t, v2.RandAugment) for t in ops)
    if p > 0:
        i, t = found[0]
        assert i == 1 and isinstance(ops[0], v2.RandomResizedCrop)  # right after the crop
        assert isinstance(ops[2].transforms[0], v2.ColorJitter)  # before the colour jitter
        ra = t.transforms[0]
        assert t.p == p and ra.num_ops == 3 and ra.magnitude == 5 and ra.num_magnitude_bins == 31
        assert v2.InterpolationMode(ra.interpolation) == NEAREST and ra.fill is None


@pytest.mark.parametrize(
    "kwargs",
    [{"randaugment_p": 1.5}, {"randaugment_p": -0.1}, {"randaugment_ops": -1},
     {"randaugment_magnitude": 31}, {"randaugment_magnitude": -1}],
)  # fmt: skip
def test_viewspec_validates_randaugment_fields(kwargs):
    with pytest.raises(ValueError):
        ViewSpec(16, **kwargs)


def test_flip_comes_after_the_geometric_ops():
    """ShearY around the top-left corner does not commute with the flip: the fast path flips after
    RandAugment, as the reference (flip last)."""
    x8 = _images(1)
    name = "ShearY"
    params = sample_params(RA_ONLY, 1, 16, 16)._replace(
        flip=torch.tensor([True]),
        randaugment=torch.tensor([True]),
        randaugment_ops=torch.tensor([[_RANDAUGMENT_OPS.index(name)]]),
        randaugment_negate=torch.tensor([[False]]),
    )
    out = apply_params(x8.float() / 255, RA_ONLY, params)[0]
    m = _tv_magnitude(name, False, 16, 16)
    op_then_flip = _tv_op(x8[0], name, m).flip(-1).float() / 255
    flip_then_op = _tv_op(x8[0].flip(-1), name, m).float() / 255
    assert not torch.equal(op_then_flip, flip_then_op)
    torch.testing.assert_close(out, op_then_flip, rtol=0, atol=1e-6)
