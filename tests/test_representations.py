"""data/representations.py: MV-MR's hand-crafted representations vs naive loops and closed forms."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import data.representations as R
from data.representations import compute_representations, hog, local_std

F64 = torch.float64
W = (1.0, 2.0, 1.0)  # Sobel smoothing weights


# ---------------------------------------------------------------- naive HOG (python loops)
def naive_hog(im: torch.Tensor, nbins: int, pool: int, official: bool = True) -> torch.Tensor:
    """One channel [H, W] -> [nbins, H//pool, W//pool], from docs/methods.md §7.2 / §7.6-3."""
    h, w = im.shape

    def px(i, j):  # zero padding
        return im[i, j].item() if 0 <= i < h and 0 <= j < w else 0.0

    hist = [[[0.0] * w for _ in range(h)] for _ in range(nbins)]
    for i in range(h):
        for j in range(w):
            g0 = sum(W[k] * (px(i + k - 1, j - 1) - px(i + k - 1, j + 1)) for k in range(3))
            g1 = sum(W[k] * (px(i - 1, j + k - 1) - px(i + 1, j + k - 1)) for k in range(3))
            mag = math.sqrt(g0 * g0 + g1 * g1)
            phase = math.atan2(g0, g1) / math.pi * nbins
            lo, hi = math.floor(phase), math.ceil(phase)
            if official:  # set the floor bin to m, then add 1 - m to the ceil bin
                hist[lo % nbins][i][j] = mag
                hist[hi % nbins][i][j] += 1 - mag
            else:
                hist[lo % nbins][i][j] += mag * (1 - (phase - lo))
                hist[hi % nbins][i][j] += mag * (phase - lo)
    out = torch.zeros(nbins, h // pool, w // pool, dtype=F64)
    for b in range(nbins):
        for ci in range(h // pool):
            for cj in range(w // pool):
                cell = [hist[b][ci * pool + u][cj * pool + v]
                        for u in range(pool) for v in range(pool)]
                out[b, ci, cj] = sum(cell) / len(cell)
    return out


@pytest.mark.parametrize("official", [True, False])
def test_hog_matches_naive_loops(official):
    im = torch.randn(2, 2, 8, 12, dtype=F64)
    got = hog(im, nbins=24, pool=4, official_binning=official)
    assert got.shape == (2, 2 * 24, 2, 3)
    for b in range(2):
        for c in range(2):  # channel c -> output channels c*24 ... c*24 + 23
            ref = naive_hog(im[b, c], 24, 4, official)
            torch.testing.assert_close(got[b, c * 24:(c + 1) * 24], ref, rtol=1e-10, atol=1e-12)


def _edge_maps(im: torch.Tensor, official: bool) -> torch.Tensor:
    return hog(im[None, None], nbins=24, pool=1, official_binning=official)[0]  # [24, H, W]


def test_hog_vertical_edge_closed_form():
    """Left half 0, right half 1: the two edge columns have g0 = -4, g1 = 0, phase -pi/2 -> bin 12.

    Official binning puts 1 (not the magnitude 4) in bin 12, since floor == ceil there, and 1 in
    bin 0 on every flat pixel (atan2(0, 0) = 0); linear binning puts the magnitude 4 in bin 12.
    """
    im = torch.zeros(8, 8, dtype=F64)
    im[:, 4:] = 1.0
    inner = slice(1, 7)  # rows away from the zero-padded top/bottom border
    official = _edge_maps(im, True)[:, inner]
    expected = torch.zeros(24, 6, 8, dtype=F64)
    expected[12, :, 3:5] = 1.0
    expected[0, :, [1, 2, 5, 6]] = 1.0  # flat interior columns
    torch.testing.assert_close(official[:, :, 1:7], expected[:, :, 1:7], rtol=0, atol=0)
    linear = _edge_maps(im, False)[:, inner]
    assert (linear[12, :, 3:5] == 4.0).all()
    assert linear[:, :, 1:7].sum() == 4.0 * 12  # all mass in bin 12 at the edge pixels


def test_hog_diagonal_ramp_lands_in_bin_18():
    """x = j - i: g0 = -8, g1 = 8, phase -pi/4 -> -6 -> bin 18, magnitude 8 sqrt(2)."""
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    maps = _edge_maps((j - i).to(F64), False)[:, 1:7, 1:7]
    torch.testing.assert_close(maps[18], torch.full((6, 6), 8 * math.sqrt(2), dtype=F64))
    assert maps.sum() == pytest.approx(36 * 8 * math.sqrt(2))
    assert (_edge_maps((j - i).to(F64), True)[18, 1:7, 1:7] == 1.0).all()


def test_hog_pooling_and_channels():
    im = torch.zeros(1, 2, 16, 16, dtype=F64)
    im[0, 1, :, 8:] = 1.0
    out = hog(im)  # defaults: 24 bins, 8x8 cells
    assert out.shape == (1, 48, 2, 2)
    blank = torch.zeros(24, 2, 2, dtype=F64)
    blank[0] = 1.0  # a blank channel: every pixel puts 1 in bin 0
    torch.testing.assert_close(out[0, :24], blank)
    assert out[0, 24 + 12].sum() > 0  # the vertical edge of channel 1


# ---------------------------------------------------------------- local std, pixels, augment
def naive_local_std(im: torch.Tensor) -> torch.Tensor:
    h, w = im.shape

    def reflect(k, n):
        return -k if k < 0 else (2 * (n - 1) - k if k >= n else k)

    out = torch.zeros(h, w, dtype=F64)
    for i in range(h):
        for j in range(w):
            vals = [im[reflect(i + u, h), reflect(j + v, w)].item()
                    for u in (-1, 0, 1) for v in (-1, 0, 1)]
            mean, mean_sq = sum(vals) / 9, sum(v * v for v in vals) / 9
            out[i, j] = math.sqrt(max(mean_sq - mean**2 + 1e-8, 0.0))
    return out


def test_local_std_matches_naive_and_constant():
    im = torch.randn(1, 2, 5, 6, dtype=F64)
    got = local_std(im)
    for c in range(2):
        torch.testing.assert_close(got[0, c], naive_local_std(im[0, c]), rtol=1e-10, atol=1e-12)
    const = local_std(torch.full((2, 3, 6, 6), 0.5, dtype=F64))
    torch.testing.assert_close(const, torch.full_like(const, math.sqrt(1e-8)), rtol=1e-6, atol=0)
    torch.testing.assert_close(R.box_blur(torch.full((1, 1, 4, 4), 2.0, dtype=F64)),
                               torch.full((1, 1, 4, 4), 2.0, dtype=F64))


def test_pixels_and_augment_scale():
    im = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(R.pixels(im), im / 32)
    calls = []

    def flip(x):
        calls.append(x.shape)
        return x.flip(-1)

    torch.testing.assert_close(R.augmented(im, flip), im.flip(-1) / 32)
    assert calls == [im.shape]  # called once on the whole batch: one random draw


def test_batch_augment_is_one_draw_for_the_batch():
    torch.manual_seed(0)
    im = torch.rand(1, 3, 16, 16).expand(4, 3, 16, 16).contiguous()  # 4 copies of one image
    out = R.batch_augment(16)(im)
    assert out.shape == im.shape
    assert all(torch.equal(out[0], out[k]) for k in range(1, 4))  # same crop/flip/jitter for all
    own = R.per_image(R.batch_augment(16))(im)
    assert not all(torch.equal(own[0], own[k]) for k in range(1, 4))


# ---------------------------------------------------------------- scattering and the registry
def test_scatnet_shape_or_clear_error(monkeypatch):
    im = torch.randn(2, 3, 16, 16)
    try:
        import kymatio  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install kymatio"):
            R.scatnet(im)
    else:
        out = R.scatnet(im)
        assert out.shape == (2, 3 * 81, 4, 4)  # 1 + J L + L^2 J (J-1) / 2 = 81 for J=2, L=8
        assert R.scatnet(im.double()).dtype == F64
        torch.testing.assert_close(R.scatnet(im.double()).float(), out, rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(R, "_SCATTERING", {})
    monkeypatch.setitem(sys.modules, "kymatio.scattering2d.frontend.torch_frontend", None)
    with pytest.raises(ImportError, match="pip install kymatio"):
        R.scatnet(im)


def test_compute_representations():
    im = torch.randn(2, 3, 16, 16, requires_grad=True)
    names = ["pixels", "augment", "hog", "std"]
    reps = compute_representations(im, names, augment=lambda x: x.flip(-1))
    assert list(reps) == names
    assert not any(r.requires_grad for r in reps.values())
    assert reps["hog"].shape == (2, 72, 2, 2) and reps["std"].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown"):
        compute_representations(im, ["sift"])
    with pytest.raises(ValueError, match="augment callable"):
        compute_representations(im, ["augment"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = compute_representations(im.bfloat16(), ["hog", "std"])
    assert all(r.dtype == torch.float32 for r in amp.values())
    official = ["pixels", "scatnet", "augment", "hog", "std"]
    assert list(R.REPRESENTATIONS)[:5] == official  # the official order of the terms
    variants = compute_representations(im, ["hog_linear", "augment_per_image"],
                                       augment=lambda x: x.flip(-1))
    torch.testing.assert_close(variants["hog_linear"], hog(im.detach(), official_binning=False))
    torch.testing.assert_close(variants["augment_per_image"], reps["augment"])
