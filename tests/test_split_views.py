"""--aug-device split (data/split_views.py): the workers crop, the device colours.

(1) views come out in the recipe's side-major order with the right shapes and dtypes (V = 2,
ns = 4, PatchMix's multi-crop); (2) every parameter has the ViewSpec's distribution: worker-side
crop scale/ratio (two-sample KS against BatchMultiView's sampler, itself tested against
torchvision's in test_transforms_stats.py) and flip rate, device-side jitter/grey/blur/solarize
rates and ranges recovered exactly from outputs of chosen inputs; (3) the hue implementations
equal their references (PIL's 8-bit HSV bit for bit); (4) the placement switch; (5) a pretraining
run on an ImageFolder tree with 2 workers resumed from a mid-epoch checkpoint ends bit-identical
to the uninterrupted run.
"""

import colorsys
import math
import os
import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image
from scipy import stats
from test_reliability import assert_same, run, write_image
from test_transforms_stats import padded_offsets
from torch.utils.data import default_collate
from torchvision.transforms import functional as TF1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from data.hue import shift_hue, shift_hue_pil
from data.per_sample import MultiViewTransform
from data.split_views import DevicePhotometric, GeometricViews, resolve_placement
from data.view_params import sample_params
from data.views import ViewSpec, byol_asymmetric, multicrop
from utils.checkpoint import load_checkpoint

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std: outputs stay in [0, 1]
KS_P_MIN = 1e-3
N = 4000  # samples per distribution check
# no colour op at all: the device stage is then the identity (plus normalisation)
PLAIN = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _assert_rate(mask: torch.Tensor, p: float) -> None:
    sd = math.sqrt(max(p * (1 - p), 1e-12) / mask.numel())
    assert abs(mask.float().mean().item() - p) <= 5 * sd + 1e-12, (mask.float().mean(), p)


def _pil(h: int = 40, w: int = 50, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def _constant_views(specs, batch: int) -> list[torch.Tensor]:
    """View v of every sample filled with the value 10 * (v + 1): its order is visible."""
    return [torch.full((batch, 3, s.size, s.size), 10 * (v + 1), dtype=torch.uint8)
            for v, s in enumerate(specs)]


# ============ (1) order, shapes, dtypes ============

RECIPES = {
    "V=2": byol_asymmetric(32, ns=1),
    "ns=4": byol_asymmetric(32, ns=4),
    "multicrop 2+8": multicrop(byol_asymmetric(32, interpolation="bicubic"), 8, 16),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_views_keep_order_shapes_and_dtypes(name):
    specs = RECIPES[name]
    worker = GeometricViews(specs)
    batch = default_collate([worker(_pil(seed=i)) for i in range(5)])  # what the loader yields
    assert [tuple(x.shape) for x in batch] == [(5, 3, s.size, s.size) for s in specs]
    assert all(x.dtype == torch.uint8 for x in batch)
    views = DevicePhotometric(specs, *IDENTITY)(batch)
    assert [tuple(x.shape) for x in views] == [(5, 3, s.size, s.size) for s in specs]
    assert all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x in views)
    # side-major order survives the grouping by spec: with no colour op, view v is input v
    plain = [replace(s, **PLAIN) for s in specs]
    inputs = _constant_views(plain, 3)
    out = DevicePhotometric(plain, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(inputs)
    for x, y in zip(inputs, out, strict=True):
        torch.testing.assert_close(y, (x.float() / 255 - 0.5) / 0.25)


def test_worker_views_are_seeded_per_sample_and_independent():
    specs = byol_asymmetric(24, ns=2)
    worker, img = GeometricViews(specs), _pil(64, 64)
    torch.manual_seed(5)
    first = worker(img)
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(first, worker(img), strict=True))
    assert not torch.equal(first[0], first[1])  # two crops of one side differ


# ============ (2) distributions: worker side ============


def _ramp(size: int = 256) -> Image.Image:
    """R = column, G = row: a crop's box and flip can be read back from the output."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return Image.fromarray(torch.stack([xx, yy, xx * 0], -1).byte().numpy())


def test_worker_crop_scale_ratio_and_flip_match_the_viewspec():
    spec = ViewSpec(32, scale=(0.2, 0.9), flip_p=0.3)
    captured = []
    worker = GeometricViews([spec])
    crop = worker.transforms[0].transforms[0]
    make = crop.make_params
    crop.make_params = lambda inputs: captured.append(make(inputs)) or captured[-1]
    torch.manual_seed(0)
    flips = []
    img = _ramp()
    for _ in range(N // 4):
        out = worker(img)[0][0].float()  # R channel = source column
        flips.append(out[:, 0].mean() > out[:, -1].mean())
    area = torch.tensor([p["height"] * p["width"] / 256**2 for p in captured])
    ratio = torch.tensor([p["width"] / p["height"] for p in captured])
    ref = sample_params(spec, N, 256, 256, torch.Generator().manual_seed(1))
    ref_area = (ref.height * ref.width).double() / 256**2
    ref_ratio = ref.width.double() / ref.height.double()
    assert stats.ks_2samp(area.numpy(), ref_area.numpy()).pvalue > KS_P_MIN
    assert stats.ks_2samp(ratio.numpy(), ref_ratio.numpy()).pvalue > KS_P_MIN
    assert 0.2 - 1e-2 <= area.min() and area.max() <= 0.9 + 1e-2
    _assert_rate(torch.tensor(flips), 0.3)


def test_padded_crop_zeros_offsets_and_flip_match_the_other_placements():
    """ViewSpec.pad (MV-MR's cifar policy): the worker pads with zeros, crops at offsets uniform
    over 0..2 pad (as the per-sample and batched paths, tests/test_transforms_stats.py) and flips;
    the device stage keeps the zeros (before the normalisation) and the flip rate is the spec's."""
    spec, pad = ViewSpec(16, pad=4, flip_p=0.3, **PLAIN), 4
    img = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    img[0, :, :8] = 100  # left half darker in R: the flip is visible
    worker = GeometricViews([spec])
    torch.manual_seed(3)
    batch = default_collate([worker(img) for _ in range(N // 2)])
    views = DevicePhotometric([spec], *IDENTITY)(batch)[0]
    assert views.shape == (N // 2, 3, 16, 16) and views.dtype == torch.float32
    green = views[:, 1:2].expand(-1, 3, -1, -1)  # constant 200 where not padded
    for offsets in padded_offsets(green, 200 / 255, pad):
        counts = torch.bincount(offsets, minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1 and stats.chisquare(counts.numpy()).pvalue > KS_P_MIN
    red, cols = views[:, 0], torch.arange(16.0)
    dark = ((red - 100 / 255).abs() < 1e-6).any(1).float()  # columns showing each half
    light = ((red - 200 / 255).abs() < 1e-6).any(1).float()
    assert (dark.sum(1) >= 4).all() and (light.sum(1) >= 4).all()
    flipped = (dark @ cols) / dark.sum(1) > (light @ cols) / light.sum(1)  # dark half on the right
    _assert_rate(flipped, 0.3)


# ============ (2) distributions: device side ============


def _device(spec: ViewSpec, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return DevicePhotometric([spec], *IDENTITY)([x])[0]


def test_device_gray_and_solarize_rates():
    x = torch.tensor([200, 60, 120], dtype=torch.uint8).view(1, 3, 1, 1).expand(N, 3, 4, 4)
    out = _device(ViewSpec(4, **dict(PLAIN, gray_p=0.2)), x.contiguous())
    gray = (out.amax(1) - out.amin(1)).amax((1, 2)) < 1e-6
    _assert_rate(gray, 0.2)
    out = _device(ViewSpec(4, **dict(PLAIN, solarize_p=0.3)), x.contiguous())
    solarized = (out[:, 0, 0, 0] - (255 - 200) / 255).abs() < 1e-6  # 200 >= 128 is inverted
    _assert_rate(solarized, 0.3)
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 60 / 255))  # < 128: never


def test_device_blur_rate_and_sigma_range():
    spec = ViewSpec(15, **dict(PLAIN, blur_p=0.6), blur_sigma=(0.1, 2.0))
    x = torch.zeros(N, 3, 15, 15, dtype=torch.uint8)
    x[:, :, 7, 7] = 255  # a delta: the output is the kernel itself
    out = _device(spec, x)[:, 0, 7]  # the centre row
    blurred = out[:, 8] > 0  # exactly 0 without blur; exp(-50) at sigma 0.1 is still a float
    _assert_rate(blurred, 0.6)
    k0, k1 = out[blurred, 7].double(), out[blurred, 8].double()
    sigma = torch.sqrt(-0.5 / torch.log(k1 / k0))  # k(1) / k(0) = exp(-1 / (2 sigma^2))
    assert stats.kstest(sigma.numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > KS_P_MIN


def test_device_brightness_rate_and_range():
    spec = ViewSpec(4, **dict(PLAIN, jitter_p=0.8), jitter=(0.4, 0.0, 0.0, 0.0))
    x = torch.full((N, 3, 4, 4), 102, dtype=torch.uint8)  # 0.4: f * 0.4 never clips
    factor = _device(spec, x)[:, 0, 0, 0] / (102 / 255)
    applied = (factor - 1).abs() > 1e-6
    _assert_rate(applied, 0.8)
    assert stats.kstest(factor[applied].numpy(), stats.uniform(0.6, 0.8).cdf).pvalue > KS_P_MIN


@pytest.mark.parametrize("hue_impl", ["float", "pil"])
def test_device_hue_rate_and_range(hue_impl):
    spec = ViewSpec(2, **dict(PLAIN, jitter_p=0.8), jitter=(0.0, 0.0, 0.0, 0.1))
    x = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(N, 3, 2, 2)
    torch.manual_seed(0)
    out = DevicePhotometric([spec], *IDENTITY, hue_impl=hue_impl)([x.contiguous()])[0]
    hue = torch.tensor([colorsys.rgb_to_hsv(*p.tolist())[0] for p in out[:, :, 0, 0]])
    shift = (hue + 0.5) % 1 - 0.5  # red has hue 0: the output hue is the shift
    ref = torch.rand(N, generator=torch.Generator().manual_seed(2)) * 0.2 - 0.1
    unchanged = 0.0
    if hue_impl == "pil":
        # PIL: hue byte += int(f * 255) mod 256 on a 255-wide scale, so f in (-2/255, 1/255)
        # leaves red unchanged (byte 0 or 255) and negative shifts land 1/255 higher
        shift = (shift * 255).round() / 255  # the rounding of the uint8 RGB output
        ref = (torch.trunc(ref * 255).remainder(256) / 255 + 0.5) % 1 - 0.5
        ref, unchanged = ref[ref.abs() > 1e-6], 3 / 51
    applied = shift.abs() > 1e-6
    _assert_rate(applied, 0.8 * (1 - unchanged))
    assert shift.abs().max() <= 0.1 + 1e-3
    assert stats.ks_2samp(shift[applied].numpy(), ref.numpy()).pvalue > KS_P_MIN


def test_device_randaugment_specs_flip_after_randaugment_on_the_device():
    # magnitude 0: no shear/rotation/translation, and the other ops keep a ramp increasing
    spec = ViewSpec(8, **PLAIN, randaugment_p=1.0, randaugment_magnitude=0, flip_p=0.5)
    assert len(GeometricViews([spec]).transforms[0].transforms) == 1  # the worker only crops
    x = torch.arange(8, dtype=torch.uint8).mul(30).view(1, 1, 1, 8).expand(N // 4, 3, 8, 8)
    torch.manual_seed(0)
    out = DevicePhotometric([spec], *IDENTITY)([x.contiguous()])[0]
    _assert_rate(out[:, 0, 0, 0] > out[:, 0, 0, -1], 0.5)


# ============ (3) hue implementations ============


def _random_pixels(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, n, n), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("shift", [-0.5, -0.37, -0.1, 0.0, 0.004, 0.05, 0.0999, 0.3, 0.5])
def test_pil_hue_is_pils_8bit_hsv_bit_for_bit(shift):
    x = _random_pixels()
    ours = shift_hue_pil(x.float() / 255, torch.tensor([shift]))[0] * 255
    ref = TF.pil_to_tensor(TF1.adjust_hue(TF.to_pil_image(x[0]), shift)).float()
    assert torch.equal(ours.round(), ref)


@pytest.mark.parametrize("shift", [-0.4, -0.05, 0.1, 0.5])
def test_float_hue_equals_torchvision(shift):
    x = _random_pixels().float() / 255
    ours = shift_hue(x, torch.tensor([shift]))
    torch.testing.assert_close(ours, TF.adjust_hue(x, shift), atol=2e-6, rtol=0)


@pytest.mark.parametrize("hue_impl", ["float", "pil"])
def test_per_sample_hue_matches_its_reference(hue_impl):
    """The reference path's ColorJitter (hue only): "pil" = torchvision on the PIL image, exactly;
    "float" = torchvision's tensor kernel, within one uint8 level."""
    spec = ViewSpec(64, crop=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0,
                    jitter=(0.0, 0.0, 0.0, 0.1), jitter_p=1.0, gray_p=0.0, blur_p=0.0)
    x = _random_pixels()[0]
    torch.manual_seed(3)
    ours = MultiViewTransform([spec], *IDENTITY, hue_impl=hue_impl)(x)[0] * 255
    torch.manual_seed(3)
    crop = v2.RandomResizedCrop(64, scale=(1.0, 1.0), ratio=(1.0, 1.0), antialias=True)
    source = crop(TF.to_pil_image(x) if hue_impl == "pil" else x)
    ref = v2.RandomApply([v2.ColorJitter(hue=0.1)], p=1.0)(source)  # the same draws
    ref = (TF.pil_to_tensor(ref) if hue_impl == "pil" else ref).float()
    assert (ours.round() - ref).abs().max() <= (0 if hue_impl == "pil" else 1)


# ============ (4) placement switch ============


def test_auto_placement_and_one_line_errors():
    assert resolve_placement("auto", True, "cuda") == "device"
    assert resolve_placement("auto", False, "cuda") == "split"
    assert resolve_placement("auto", False, "cpu") == "workers"
    assert resolve_placement("split", False, "cpu") == "split"
    for args, fix in (("device", False), "--aug-device split"), (("split", True), "device"):
        with pytest.raises(SystemExit) as info:
            resolve_placement(*args, "cpu")
        message = str(info.value)
        assert message.startswith("error:") and "\n" not in message and fix in message


# ============ (5) exact resume with 2 workers ============

SPLIT = ["--dataset", "folder", "--img-size", "16", "--train-subset", "0", "-b", "8",
         "--steps-per-epoch", "0", "--epochs", "2", "--keep-checkpoints", "0", "-j", "2",
         "--aug-device", "split", "--method", "mocov3", "--ns", "2"]  # fmt: skip


def test_split_pretraining_resumes_bit_exactly_with_two_workers(tmp_path):
    root = str(tmp_path / "tree")
    for i in range(16):
        write_image(f"{root}/train/{'cat' if i < 8 else 'dog'}/{i:02d}.jpg", i, size=24)
    reference, resumed = str(tmp_path / "ref"), str(tmp_path / "resumed")
    console = run(reference, *SPLIT, "--data", root)
    assert "epoch 2/2" in console
    os.makedirs(resumed)
    shutil.copy(os.path.join(reference, "checkpoint_0000_000001.pth.tar"), resumed)
    run(resumed, *SPLIT, "--data", root, "--resume", "auto")
    final = "checkpoint_0002_000000.pth.tar"
    ours, ref = (load_checkpoint(os.path.join(d, final)) for d in (resumed, reference))
    assert_same(ours["model"], ref["model"], "model")
    assert_same(ours["optimizer"], ref["optimizer"], "optimizer")
    assert ours["args"]["aug_device"] == "split"


def test_build_view_loader_wires_the_split_placement(tmp_path):
    """The loader yields uint8 crops of the final sizes; make_views is the device stage."""
    import argparse

    from data.loaders import build_view_loader

    root = str(tmp_path / "tree")
    for i in range(8):
        write_image(f"{root}/train/{'cat' if i < 4 else 'dog'}/{i:02d}.jpg", i, size=40)
    args = argparse.Namespace(
        dataset="folder", data=root, aug_device="split", hue_impl="pil", device=torch.device("cpu"),
        seed=0, train_subset=0, batch_size=4, batch_size_per_gpu=4, workers=0,
        on_bad_image="fail", compute_stats=0, mean=None, std=None)  # fmt: skip
    specs = RECIPES["multicrop 2+8"]
    loader, make_views, _ = build_view_loader(args, specs)
    assert isinstance(make_views, DevicePhotometric) and make_views.hue_impl == "pil"
    views, _ = next(iter(loader))
    assert [(x.dtype, tuple(x.shape)) for x in views] == [
        (torch.uint8, (4, 3, s.size, s.size)) for s in specs]
    assert all(x.dtype == torch.float32 for x in make_views(views))

def test_per_sample_float_jitter_is_torchvisions_float_jitter_rounded_once():
    """MultiViewTransform's ColorJitter ("float"): torchvision's float kernels in the drawn order,
    one rounding to uint8 at the end (torchvision's uint8 kernels round after every op)."""
    from data.per_sample import _ColorJitter

    x = _random_pixels()[0]
    kernels = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for seed in range(20):
        torch.manual_seed(seed)
        ours = _ColorJitter(0.4, 0.4, 0.2, 0.1)(x)
        torch.manual_seed(seed)
        params = v2.ColorJitter(0.4, 0.4, 0.2, 0.1).make_params([x])
        factors = [params[k] for k in ("brightness_factor", "contrast_factor",
                                       "saturation_factor", "hue_factor")]  # fmt: skip
        ref = x.float() / 255
        for fn_id in params["fn_idx"].tolist():
            ref = kernels[fn_id](ref, factors[fn_id])
        assert (ours.float() - (ref * 255).round()).abs().max() <= 1
