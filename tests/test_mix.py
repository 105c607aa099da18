"""data/mix.py: PatchMix image mixing and soft targets, against hand-made cases and naive loops."""

from __future__ import annotations

import pytest
import torch

from data.mix import mix_targets, patch_mix, smoothed_identity, source_offsets
from losses.patchmix import patchmix_targets


def _coded_images(b: int, h: int, w: int) -> torch.Tensor:
    """[B, 2, H, W]: channel 0 holds the image index, channel 1 the pixel index (row-major)."""
    img = torch.arange(b, dtype=torch.float64)[:, None, None].expand(b, h, w)
    pix = torch.arange(h * w, dtype=torch.float64).view(1, h, w).expand(b, h, w)
    return torch.stack([img, pix], dim=1)


def _naive_patch_mix(x: torch.Tensor, p: int, m: int, perm: list[int]) -> torch.Tensor:
    """The official recipe, step by step with loops: patchify, shuffle, cycle groups, unshuffle."""
    b, _, h, w = x.shape
    gw = w // p
    patches = [[x[g, :, (t // gw) * p:(t // gw + 1) * p, (t % gw) * p:(t % gw + 1) * p]
                for t in range(len(perm))] for g in range(b)]
    shuffled = [[patches[g][perm[i]] for i in range(len(perm))] for g in range(b)]
    s = len(perm) // m
    mixed = [list(row) for row in shuffled]
    for g in range(b):  # group j of mixed image g is group j of image (g + j) mod B
        for j in range(m):
            for i in range(j * s, (j + 1) * s):
                mixed[g][i] = shuffled[(g + j) % b][i]
    out = torch.empty_like(x)
    for g in range(b):
        for i, t in enumerate(perm):  # unshuffle: shuffled slot i goes back to position perm[i]
            out[g, :, (t // gw) * p:(t // gw + 1) * p, (t % gw) * p:(t % gw + 1) * p] = mixed[g][i]
    return out


def test_patch_mix_by_hand():
    # B = 3 images of 4x4 pixels, patch 2: T = 4 tokens (TL, TR, BL, BR), m = 2, S = 2
    x = _coded_images(3, 4, 4)
    perm = torch.tensor([3, 0, 2, 1])  # group 0 = positions {3, 0}, group 1 = positions {2, 1}
    out = patch_mix(x, 2, 2, perm)
    source = out[:, 0]  # [B, H, W] image index of every pixel
    for g in range(3):
        expected = torch.tensor([[g, g, g + 1, g + 1],  # TL from g, TR (pos 1) from g + 1
                                 [g, g, g + 1, g + 1],
                                 [g + 1, g + 1, g, g],  # BL (pos 2) from g + 1, BR from g
                                 [g + 1, g + 1, g, g]], dtype=torch.float64) % 3
        assert torch.equal(source[g], expected)
    # every pixel stays at its place: only the source image changes
    assert torch.equal(out[:, 1], x[:, 1])


@pytest.mark.parametrize("b,h,w,p,m", [(4, 8, 8, 2, 2), (5, 6, 6, 2, 3), (3, 4, 8, 2, 3),
                                       (2, 6, 4, 1, 2), (1, 4, 4, 2, 2)])
def test_patch_mix_matches_naive_official_recipe(b, h, w, p, m):
    x = torch.randn(b, 3, h, w, dtype=torch.float64)
    perm = torch.randperm((h // p) * (w // p))
    assert torch.equal(patch_mix(x, p, m, perm), _naive_patch_mix(x, p, m, perm.tolist()))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_each_source_contributes_one_mth(m):
    b, grid = 6, 6  # T = 36 tokens, divisible by 2, 3 and 4
    x = _coded_images(b, grid, grid)
    out = patch_mix(x, 1, m)
    for g in range(b):
        counts = torch.bincount(out[g, 0].long().flatten(), minlength=b)
        expected = torch.zeros(b, dtype=torch.long)
        expected[[(g + j) % b for j in range(m)]] = grid * grid // m
        assert torch.equal(counts, expected)


def test_leftover_tokens_stay_with_the_image():
    perm = torch.tensor([4, 1, 0, 3, 2])  # T = 5, m = 2: S = 2, position 2 is left over
    offsets = source_offsets(5, 2, perm)
    assert offsets.tolist() == [1, 0, 0, 1, 0]


def test_patch_mix_independent_perms_share_partners():
    x = _coded_images(4, 4, 4)
    a, b = patch_mix(x, 1, 2), patch_mix(x, 1, 2)
    for g in range(4):
        assert set(a[g, 0].unique().tolist()) == set(b[g, 0].unique().tolist()) == {g, (g + 1) % 4}


def test_patch_mix_m1_is_identity_and_bad_inputs_raise():
    x = torch.randn(3, 3, 4, 4)
    assert torch.equal(patch_mix(x, 2, 1), x)
    with pytest.raises(ValueError):
        patch_mix(x, 3, 2)
    with pytest.raises(ValueError):
        patch_mix(x, 2, 2, torch.arange(3))


def _naive_targets(b, m, eps, rank, world):
    """Targets from the notes (§9.1), with the scatter_ overwrite done as 'last write wins'."""
    n = b * world
    mix = [[eps / n] * n for _ in range(b)]
    mixmix = [[eps / n] * n for _ in range(b)]
    for g in range(b):
        for j in range(m):
            mix[g][(g + j) % b + b * rank] = (1 - eps) / m + eps / n
        for i in range(2 * m - 1):
            weight = 1 - abs(m - i - 1) / m
            mixmix[g][(g - m + 1 + i) % b + b * rank] = (1 - eps) * weight / m + eps / n
    return torch.tensor(mix, dtype=torch.float64), torch.tensor(mixmix, dtype=torch.float64)


@pytest.mark.parametrize("b,m,eps,rank,world", [(5, 2, 0.0, 0, 1), (6, 3, 0.1, 1, 2),
                                                (4, 2, 0.2, 2, 3), (2, 2, 0.0, 0, 1),
                                                (1, 2, 0.1, 1, 2)])
def test_targets_match_naive(b, m, eps, rank, world):
    got = mix_targets(b, m, eps, rank=rank, world_size=world, dtype=torch.float64)
    want = _naive_targets(b, m, eps, rank, world)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-15, atol=0)


def test_targets_exact_values_m2():
    mix, mixmix = mix_targets(5, 2, dtype=torch.float64)
    for g in range(5):
        assert mix[g].sum() == 1.0 and mixmix[g].sum() == 1.0
        assert mix[g, [g, (g + 1) % 5]].tolist() == [0.5, 0.5]
        assert mixmix[g, [(g - 1) % 5, g, (g + 1) % 5]].tolist() == [0.25, 0.5, 0.25]
        assert (mixmix[g] > 0).sum() == 3


def test_mixmix_is_the_overlap_of_shares():
    # mixed q_g and mixed k_c share source s with weight (1/m)(1/m): Y_mixmix = Y_mix Y_mix^T
    for b, m in [(5, 2), (7, 3), (2, 2), (3, 3)]:
        mix, mixmix = mix_targets(b, m, accumulate=True, dtype=torch.float64)
        torch.testing.assert_close(mixmix, mix @ mix.T, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(mixmix.sum(1), torch.ones(b, dtype=torch.float64))


def test_tiny_batch_overwrite_oddity():
    # B = 2 < 2m - 1: the official scatter_ keeps one 0.25 for the twice-listed neighbour
    _, official = mix_targets(2, 2, dtype=torch.float64)
    _, fixed = mix_targets(2, 2, accumulate=True, dtype=torch.float64)
    assert official.sum(1).tolist() == [0.75, 0.75]
    assert fixed.tolist() == [[0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_targets_rows_sum_to_one_with_smoothing(rank, world):
    mix, mixmix = mix_targets(4, 2, 0.1, rank=rank, world_size=world, dtype=torch.float64)
    for t in (mix, mixmix):
        torch.testing.assert_close(t.sum(1), torch.ones(4, dtype=torch.float64))
        other = torch.ones(4 * world, dtype=torch.bool)
        other[4 * rank:4 * rank + 4] = False
        assert torch.all(t[:, other] == 0.1 / (4 * world))  # other ranks' columns: eps/N only


def test_smoothed_identity():
    y = smoothed_identity(3, 0.1, rank=1, world_size=2, dtype=torch.float64)
    want = torch.full((3, 6), 0.1 / 6, dtype=torch.float64)
    want[[0, 1, 2], [3, 4, 5]] = 0.9 + 0.1 / 6
    torch.testing.assert_close(y, want, rtol=1e-15, atol=0)
    assert torch.equal(smoothed_identity(4, 0.0), torch.eye(4))


@pytest.mark.parametrize("b,m,eps,acc", [(5, 2, 0.0, False), (4, 3, 0.1, False), (2, 2, 0.0, True)])
def test_loss_targets_equal_data_targets(b, m, eps, acc):
    like = torch.zeros(1, dtype=torch.float64)
    want = mix_targets(b, m, eps, accumulate=acc, dtype=torch.float64)
    got = patchmix_targets(b, m, eps, like, accumulate=acc)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
