"""PatchMix builder: MoCo v3 with patch-mixed images (visresearch/patchmix ``main_pretrain.py``
``train_epoch``, ``module/frame/contrast_momentum.py`` and ``contrast_no_momentum.py``).

For views [x1, x2, local crops ...] it computes, each batch in its own forward (so BatchNorm
statistics are per batch, as officially; the local crops, plain and mixed, are one concatenated
forward each):

    q1 = pred(proj(f(x1)))     k1 = mom(x1)     k2 = mom(x2)
    mk1 = mom(mix(x1))         mq2 = pred(proj(f(mix(x2))))
    l_c = pred(proj(f(crop_c)))                 ml_c = pred(proj(f(mix(crop_c))))

mix(x1) and mix(x2) draw independent patch permutations but share the partner images (g, g+1,
...), which the mixed-to-mixed targets assume. Without a momentum encoder (the official ViT-T
config) keys are online projector outputs without gradient, and k1 comes from q1's own pass.

Differences from the official code: whether to mix (probability mix_p, 1.0 in every official
config) is drawn once per step for all mixes, where the official draws it per mixed batch and
takes the targets from the mix(x2) draw; the patch permutation comes from torch's RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from data.mix import patch_mix
from losses.base import ViewOutputs
from models.moco import MoCoV3


class PatchMixMoCo(MoCoV3):
    """MoCo v3 plus PatchMix's mixed views. Emits what losses.patchmix.PatchMixLoss reads.

    Args:
        backbone, feat_dim, **moco_kwargs: as :class:`models.moco.MoCoV3` (dim, mlp_dim, head
            depths, ``momentum_encoder=False`` for the no-momentum ViT-T variant). Build the ViT
            with ``pos_embed="learnable"``, ``drop_path=0.1``; MoCoV3 disables it in the copy.
        mix_size: side of a mixed patch in pixels (``--mix-size``: the ViT patch size, 16 at 224 px,
            2 at 32 px). Every view's height and width must be multiples of it.
        mix_num: images per mixed image m (``--mix-num``, 2).
        mix_p: probability of mixing at a step (``--mix-p``, 1.0). An unmixed step feeds the
            plain images to the mixed branch and sets ``extras["mixed"]`` False, so that the
            loss uses identity targets.

    Shapes: forward(views: [x1, x2, C local crops], each [B, 3, H_v, W_v]) -> ViewOutputs with
        p [1 + C, B, dim] (q1, local queries), k [2, B, dim] (k1, k2; no grad),
        z [1 + C, B, dim], h [1 + C, B, feat_dim] (the online passes behind p), and extras
        p_mix [1 + C, B, dim] (mq2, mixed local queries), k_mix [1, B, dim] (mk1; no grad),
        mixed (0-d bool).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, *, mix_size: int, mix_num: int = 2,
                 mix_p: float = 1.0, **moco_kwargs) -> None:
        super().__init__(backbone, feat_dim, **moco_kwargs)
        if mix_size < 1 or mix_num < 1 or not 0.0 <= mix_p <= 1.0:
            raise ValueError(f"bad PatchMix settings: mix_size={mix_size}, mix_num={mix_num}, "
                             f"mix_p={mix_p}")
        self.mix_size, self.mix_num, self.mix_p = mix_size, mix_num, mix_p

    @torch.no_grad()
    def mix(self, x: Tensor, mixed: bool = True) -> Tensor:
        """One patch mix of [B, C, H, W] with its own random permutation (x if not mixed)."""
        return patch_mix(x, self.mix_size, self.mix_num) if mixed else x

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        if len(views) < 2:
            raise ValueError(f"PatchMix needs [x1, x2, local crops...], got {len(views)} views")
        x1, x2, crops = views[0], views[1], views[2:]
        mixed = self.mix_num > 1 and bool(torch.rand(()) < self.mix_p)  # CPU draw: no device sync

        h1, z1, q1 = self.forward_online(x1)
        k1 = z1.detach() if self.momentum_backbone is None else self.forward_target(x1)[0]
        (k2,) = self.forward_target(x2)
        (mk1,) = self.forward_target(self.mix(x1, mixed))
        _, _, mq2 = self.forward_online(self.mix(x2, mixed))
        h, z, p, p_mix = [h1[None]], [z1[None]], [q1[None]], [mq2[None]]
        if crops:
            batch = x1.shape[0]
            # all local crops go through one forward, as the official torch.cat(multi_image)
            hc, zc, qc = self.forward_online(torch.cat(crops))
            _, _, mqc = self.forward_online(torch.cat([self.mix(c, mixed) for c in crops]))
            h.append(hc.view(len(crops), batch, -1))  # [C, B, feat_dim]
            z.append(zc.view(len(crops), batch, -1))  # [C, B, dim]
            p.append(qc.view(len(crops), batch, -1))
            p_mix.append(mqc.view(len(crops), batch, -1))
        extras = {"p_mix": torch.cat(p_mix), "k_mix": mk1[None],
                  "mixed": torch.full((), mixed, device=x1.device)}  # a fill, not an H2D copy
        return ViewOutputs(p=torch.cat(p), k=torch.stack([k1, k2]), z=torch.cat(z), h=torch.cat(h),
                           extras=extras)


__all__ = ["PatchMixMoCo"]
