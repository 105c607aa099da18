"""data/mix.py: PatchMix image mixing, against hand-made cases and a naive loop of the official recipe."""

from __future__ import annotations

import pytest
import torch

from data.mix import patch_mix, source_offsets


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
