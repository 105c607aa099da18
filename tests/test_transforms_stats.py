"""BatchMultiView (fast, batched) draws from the same distributions as the torchvision reference.

Three levels: (1) each batched op equals torchvision's functional op for the same parameters;
(2) every sampled parameter has the reference distribution (two-sample KS against torchvision's
own samplers, or rates within 5 binomial standard deviations); (3) whole augmented views have the
same distribution of image statistics on both paths. All seeded, so the outcome is deterministic.
"""

import math

import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from data.batched import BatchMultiView, apply_params, color_jitter, crop_resize, gaussian_blur
from data.per_sample import MultiViewTransform
from data.view_params import sample_params
from data.views import ViewSpec, byol_asymmetric

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity normalisation: outputs stay in [0, 1]
KS_P_MIN = 1e-3  # a seeded KS test: a real mismatch gives p ~ 1e-10 at these sample sizes
MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _image(h=16, w=16, seed=0) -> torch.Tensor:
    """A colourful uint8 test image [3, h, w]: smooth gradients plus noise (all hues present)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, 1 - xx * yy])
    noise = torch.rand(3, h, w, generator=g) * 0.3
    return ((base * 0.7 + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def _assert_rate(mask: torch.Tensor, p: float) -> None:
    n = mask.numel()
    sd = math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(mask.float().mean().item() - p) <= 5 * sd + 1e-12, (mask.float().mean(), p)


# ============ (1) batched ops == torchvision functional ops, same parameters ============


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [8, 23, 48])  # down-, mixed- and up-sampling of a 37x29 image
def test_crop_resize_equals_torchvision_resized_crop(interpolation, size):
    x = torch.rand(6, 3, 37, 29, dtype=torch.float64)
    params = sample_params(ViewSpec(size), 6, 37, 29)
    params = params._replace(flip=torch.tensor([False, True] * 3))
    out = crop_resize(x, params, size, interpolation)
    for i in range(6):
        box = [int(v[i]) for v in (params.top, params.left, params.height, params.width)]
        ref = TF.resized_crop(x[i], *box, [size, size], MODES[interpolation], antialias=True)
        ref = ref.clamp(0, 1).flip(-1) if params.flip[i] else ref.clamp(0, 1)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-12)


def test_crop_resize_k_views_share_the_batch():
    """n = k * B samples: sample i crops image i % B (views of one spec in one call)."""
    x = torch.rand(3, 3, 10, 10, dtype=torch.float64)
    params = sample_params(ViewSpec(6), 6, 10, 10)
    out = crop_resize(x, params, 6, "bilinear")
    for i in range(6):
        sub = params._replace(**{f: getattr(params, f)[i : i + 1] for f in params._fields})
        torch.testing.assert_close(out[i], crop_resize(x[i % 3 : i % 3 + 1], sub, 6, "bilinear")[0])


def test_color_jitter_equals_torchvision_ops_in_each_samples_order():
    x = torch.rand(8, 3, 9, 7, dtype=torch.float64)
    spec = ViewSpec(9, jitter=(0.4, 0.4, 0.4, 0.1))
    params = sample_params(spec, 8, 9, 7)
    apply = torch.tensor([True] * 7 + [False])
    out = color_jitter(x, apply, params.factors.double(), params.order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(8):
        ref = x[i]
        for op in params.order[i].tolist() if apply[i] else []:
            ref = ops[op](ref, float(params.factors[i, op]))
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_gaussian_blur_equals_torchvision():
    x = torch.rand(5, 3, 12, 10, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 1.5])
    apply = torch.tensor([True, True, True, True, False])
    out = gaussian_blur(x, apply, sigma, 9)
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [9, 9], [float(sigma[i])] * 2) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_apply_params_grayscale_and_solarize_follow_torchvision():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    spec = ViewSpec(8, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, blur_p=0,
                    gray_p=0.5, solarize_p=0.5)  # fmt: skip
    params = sample_params(spec, 4, 8, 8)._replace(
        gray=torch.tensor([True, False, True, False]),
        solarize=torch.tensor([True, True, False, False]),
    )
    out = apply_params(x, spec, params)
    for i in range(4):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if params.gray[i] else x[i]
        ref = TF.solarize(ref, 128 / 255) if params.solarize[i] else ref
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


# ============ (2) sampled parameters have the reference distributions ============


@pytest.mark.parametrize(
    "hw, scale, ratio",
    [
        ((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((40, 24), (0.2, 1.0), (3 / 4, 4 / 3)),
        ((32, 32), (0.6, 1.0), (0.2, 5.0)),  # many rejected trials: exercises the fallback
    ],
)
def test_crop_boxes_match_torchvision_random_resized_crop(hw, scale, ratio):
    (h, w), n = hw, 2000
    torch.manual_seed(1)
    rrc = v2.RandomResizedCrop(8, scale=scale, ratio=ratio)
    dummy = torch.zeros(3, h, w)
    ref = [rrc.make_params([dummy]) for _ in range(n)]
    ref = {k: torch.tensor([float(r[k]) for r in ref]) for k in ("top", "left", "height", "width")}
    fast = sample_params(ViewSpec(8, scale=scale, ratio=ratio), n, h, w)
    got = {"top": fast.top, "left": fast.left, "height": fast.height, "width": fast.width}
    assert (fast.top >= 0).all() and (fast.top + fast.height <= h).all()
    assert (fast.left >= 0).all() and (fast.left + fast.width <= w).all()
    for key in ("height", "width", "top", "left"):
        p = stats.ks_2samp(ref[key].numpy(), got[key].float().numpy()).pvalue
        assert p > KS_P_MIN, (key, p)
    area_ref, area = ref["height"] * ref["width"], (fast.height * fast.width).float()
    assert stats.ks_2samp(area_ref.numpy(), area.numpy()).pvalue > KS_P_MIN


def test_flip_jitter_gray_blur_solarize_rates():
    torch.manual_seed(2)
    spec = ViewSpec(8, flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.1, solarize_p=0.2)
    params = sample_params(spec, 20000, 8, 8)
    for mask, p in [(params.flip, 0.5), (params.jitter, 0.8), (params.gray, 0.2),
                    (params.blur, 0.1), (params.solarize, 0.2)]:  # fmt: skip
        _assert_rate(mask, p)
    # the masks are independent of each other (no shared uniform draw)
    _assert_rate(params.flip & params.gray, 0.1)
    _assert_rate(params.jitter & params.solarize, 0.16)


def test_jitter_factors_sigma_and_op_order_distributions():
    torch.manual_seed(3)
    n = 6000
    spec = ViewSpec(8, jitter=(0.4, 0.3, 0.2, 0.1), blur_sigma=(0.1, 2.0))
    params = sample_params(spec, n, 8, 8)
    ranges = [(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]  # torchvision's ColorJitter ranges
    for j, (lo, hi) in enumerate(ranges):
        f = params.factors[:, j].double().numpy()
        assert lo <= f.min() and f.max() <= hi
        assert stats.kstest(f, "uniform", args=(lo, hi - lo)).pvalue > KS_P_MIN
    s = params.sigma.double().numpy()
    assert stats.kstest(s, "uniform", args=(0.1, 1.9)).pvalue > KS_P_MIN
    # op order: a uniform random permutation of the 4 ops, like torch.randperm(4)
    assert (params.order.sort(dim=1).values == torch.arange(4)).all()
    codes = (params.order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.bincount(codes, minlength=256)[codes.unique()]
    assert len(counts) == 24 and stats.chisquare(counts.numpy()).pvalue > KS_P_MIN


def test_brightness_floor_at_zero():
    params = sample_params(ViewSpec(8, jitter=(1.5, 0.0, 0.0, 0.0)), 2000, 8, 8)
    assert params.factors[:, 0].min() >= 0 and params.factors[:, 0].max() <= 2.5
    assert (params.factors[:, 1:3] == 1).all() and (params.factors[:, 3] == 0).all()


def test_samples_and_views_get_independent_parameters():
    torch.manual_seed(4)
    spec = ViewSpec(16, scale=(1, 1), ratio=(1, 1), flip_p=0.5, jitter_p=0, gray_p=0, blur_p=0)
    img = _image()
    x = img.unsqueeze(0).expand(4000, -1, -1, -1)  # the same image everywhere
    v1, v2_ = BatchMultiView([spec, spec], MEAN, STD)(x)
    flipped1 = (v1 - img / 255).abs().amax((1, 2, 3)) > 1e-5  # an identity crop, flipped or not
    flipped2 = (v2_ - img / 255).abs().amax((1, 2, 3)) > 1e-5
    assert torch.allclose(v1[flipped1], (img / 255).flip(-1).expand_as(v1[flipped1]), atol=1e-6)
    _assert_rate(flipped1, 0.5)
    _assert_rate(flipped2, 0.5)
    _assert_rate(flipped1 & flipped2, 0.25)  # views of one image are independent


# ============ (2b) the padded RandomCrop (ViewSpec.pad, MV-MR's cifar policy) ============


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])  # unused by a padded crop
def test_padded_crop_equals_torchvision_pad_then_crop(interpolation):
    x = torch.rand(6, 3, 20, 17, dtype=torch.float64)
    spec = ViewSpec(16, pad=3, interpolation=interpolation)
    params = sample_params(spec, 6, 20, 17)._replace(flip=torch.tensor([False, True] * 3))
    out = crop_resize(x, params, 16, interpolation)
    for i in range(6):
        top, left = int(params.top[i]) + 3, int(params.left[i]) + 3  # in the padded image
        ref = TF.pad(x[i], [3], fill=0, padding_mode="constant")[:, top:top + 16, left:left + 16]
        torch.testing.assert_close(out[i], ref.flip(-1) if params.flip[i] else ref, rtol=0, atol=0)


@pytest.mark.parametrize("hw", [(32, 32), (40, 36)])
def test_padded_crop_offsets_match_torchvision_random_crop(hw):
    (h, w), n, pad = hw, 6000, 4
    torch.manual_seed(11)
    rc, dummy = v2.RandomCrop(32, padding=pad), torch.zeros(3, h, w)
    ref = [rc.make_params([dummy]) for _ in range(n)]  # top/left in the padded image
    fast = sample_params(ViewSpec(32, pad=pad), n, h, w)
    assert (fast.height == 32).all() and (fast.width == 32).all()
    for key, extent in (("top", h), ("left", w)):
        k = extent + 2 * pad - 32 + 1  # offsets 0..H + 2 pad - size in the padded image
        got = getattr(fast, key) + pad
        assert got.min() == 0 and got.max() == k - 1
        counts = torch.bincount(got, minlength=k)
        ref_counts = torch.bincount(torch.tensor([int(r[key]) for r in ref]), minlength=k)
        assert len(ref_counts) == k and stats.chisquare(counts.numpy()).pvalue > KS_P_MIN
        assert stats.chi2_contingency([counts, ref_counts])[1] > KS_P_MIN


def padded_offsets(views: torch.Tensor, value: float, pad: int) -> tuple[torch.Tensor, ...]:
    """(top, left) offsets in the padded image of crops of a constant image of `value` (full
    size): zero rows/columns are the padding, every other pixel must be exactly `value`."""
    zero = (views == 0).all(1)  # [n, S, S]
    assert (zero | ((views - value).abs() < 1e-6).all(1)).all()
    rows, cols = zero.all(2).long(), zero.all(1).long()
    inner = ~(rows.bool().unsqueeze(2) | cols.bool().unsqueeze(1))
    assert not zero[inner].any()  # zeros only in whole padded rows and columns
    first_data = (1 - rows).argmax(1)  # zero rows above the image: pad - top
    below = rows.flip(1).cumprod(1).sum(1)  # zero rows under it: top - pad
    top = torch.where(first_data > 0, pad - first_data, pad + below)
    first_col = (1 - cols).argmax(1)
    right = cols.flip(1).cumprod(1).sum(1)
    return top, torch.where(first_col > 0, pad - first_col, pad + right)


def test_padded_views_zeros_and_offsets_on_both_paths():
    """The per-sample and batched paths pad with zeros (before the normalisation) at offsets
    uniform over 0..2 pad, and keep every image pixel."""
    spec, n, pad = ViewSpec(16, pad=4, flip_p=0.0, jitter_p=0, gray_p=0, blur_p=0), 3000, 4
    img = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    torch.manual_seed(12)
    reference = MultiViewTransform([spec], MEAN, STD)
    ref = torch.stack([reference(img)[0] for _ in range(n)])
    fast = BatchMultiView([spec], MEAN, STD)(img.unsqueeze(0).expand(n, -1, -1, -1))[0]
    for views in (ref, fast):
        for offsets in padded_offsets(views, 200 / 255, pad):
            counts = torch.bincount(offsets, minlength=2 * pad + 1)
            assert len(counts) == 2 * pad + 1 and stats.chisquare(counts.numpy()).pvalue > KS_P_MIN


# ============ (3) whole views: same output distribution on both paths ============


def _summaries(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view image statistics [N]: channel means, pixel std and mean |horizontal gradient|,
    rounded to 1e-4 so that un-augmented samples (an atom of the distribution) tie exactly."""
    summaries = {
        "mean_r": views[:, 0].mean((1, 2)),
        "mean_b": views[:, 2].mean((1, 2)),
        "std": views.flatten(1).std(1),
        "grad": (views[..., 1:] - views[..., :-1]).abs().mean((1, 2, 3)),
    }
    return {k: (v * 1e4).round() / 1e4 for k, v in summaries.items()}


_BYOL1, _BYOL2 = byol_asymmetric(16, crop_min=0.2)[0], byol_asymmetric(16, crop_min=0.2)[1]
_SPECS = {
    "byol_view1": _BYOL1,
    "byol_view2": _BYOL2,
    "jitter_only": ViewSpec(16, scale=(1, 1), ratio=(1, 1), flip_p=0, gray_p=0, blur_p=0,
                            jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=1.0),
    "blur_only": ViewSpec(16, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0,
                          blur_p=0.5, blur_kernel=7),
    "bicubic_crop": ViewSpec(12, scale=(0.1, 1), interpolation="bicubic", jitter_p=0, gray_p=0,
                             blur_p=0),
    "padded_crop": ViewSpec(12, pad=3, jitter_p=0, gray_p=0, blur_p=0),  # MV-MR cifar policy
    "padded_jitter": ViewSpec(16, pad=4, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0, blur_p=0),
}  # fmt: skip


# statistics whose spread is far above the uint8 step (the reference rounds to uint8 after every
# op, the fast path does not): a blur barely moves the mean, so only its std/gradient are compared
_KEYS = {"blur_only": ("std", "grad")}


@pytest.mark.parametrize("name", list(_SPECS))
def test_fast_and_reference_views_have_the_same_distribution(name):
    spec, n = _SPECS[name], 400
    img = _image(16, 16, seed=5)
    torch.manual_seed(6)
    reference = MultiViewTransform([spec], MEAN, STD)
    ref = torch.stack([reference(img)[0] for _ in range(n)])
    fast = BatchMultiView([spec], MEAN, STD)(img.unsqueeze(0).expand(n, -1, -1, -1))[0]
    assert ref.shape == fast.shape and ref.dtype == fast.dtype == torch.float32
    ref_s, fast_s = _summaries(ref), _summaries(fast)
    for key in _KEYS.get(name, tuple(ref_s)):
        p = stats.ks_2samp(ref_s[key].numpy(), fast_s[key].numpy()).pvalue
        assert p > KS_P_MIN, (name, key, p)


def test_seeded_runs_are_reproducible():
    x = torch.stack([_image(20, 20, seed=s) for s in range(4)])
    bmv = BatchMultiView(byol_asymmetric(16, ns=2), MEAN, STD)
    torch.manual_seed(7)
    a = bmv(x)
    torch.manual_seed(7)
    b = bmv(x)
    c = bmv(x, generator=torch.Generator().manual_seed(7))
    d = bmv(x, generator=torch.Generator().manual_seed(7))
    for u, v, w, z in zip(a, b, c, d, strict=True):
        assert torch.equal(u, v) and torch.equal(w, z)
    assert not torch.equal(a[0], a[1])  # two views of the same side still differ
