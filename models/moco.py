"""MoCo v3 builder: online backbone + projector + predictor, and an EMA (momentum) copy.

Follows facebookresearch/moco-v3 ``moco/builder.py`` (``MoCo``, ``_update_momentum_encoder``), with
the loss moved out (losses/mocov3.py) and the EMA update made an explicit call of the train loop.

Hooks for subclasses (PatchMix, DSF, SNCLR, ...), all overridable:
    forward_online(x) -> (h, z, p)   one online pass over a batch [N, C, H, W]
    forward_target(x) -> (k,)        one target pass (momentum encoder, or online under no_grad)
    forward(views)    -> ViewOutputs  runs both over the views via ``forward_grouped``
``forward_grouped(fn, views, group_size)`` is a plain function, reused by ``SimCLR``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from losses.base import ViewOutputs
from models.heads import build_mlp


def view_groups(views: list[Tensor], group_size: int) -> list[tuple[int, int]]:
    """[start, end) runs of at most ``group_size`` consecutive views that share a resolution."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(views) + 1):
        full = i - start == group_size
        if i == len(views) or full or views[i].shape[1:] != views[start].shape[1:]:
            groups.append((start, i))
            start = i
    return groups


def forward_grouped(fn: Callable[[Tensor], tuple[Tensor, ...]], views: list[Tensor],
                    group_size: int) -> tuple[Tensor, ...]:
    """Apply ``fn`` to each group of views concatenated along the batch; stack outputs view-major.

    Each group is one forward, so BatchNorm statistics are per group (group_size=1: per view, as
    MoCo v3; group_size=ns: per branch of ns crops, as DSF). Shapes: views V x [B, C, H, W];
    fn maps [n B, C, H, W] to a tuple of [n B, ...]; returns a tuple of [V, B, ...].
    """
    if not views:
        raise ValueError("no views to forward")
    batch = views[0].shape[0]
    if any(v.shape[0] != batch for v in views):
        raise ValueError(f"every view needs the same batch size, got {[v.shape[0] for v in views]}")
    per_view: list[tuple[Tensor, ...]] = []
    for start, end in view_groups(views, group_size):
        outs = fn(torch.cat(views[start:end]) if end - start > 1 else views[start])
        chunks = [o.chunk(end - start) for o in outs]  # per output: n x [B, ...]
        per_view += list(zip(*chunks, strict=True))
    return tuple(torch.stack(o) for o in zip(*per_view, strict=True))  # per output: [V, B, ...]


def _disable_drop_path(module: nn.Module) -> None:
    """The EMA teacher is never regularised (PatchMix builds it without drop-path)."""
    for m in module.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0


class MoCoV3(nn.Module):
    """MoCo v3: ``p = predictor(projector(backbone(x)))`` and, without gradient,
    ``k = momentum_projector(momentum_backbone(x))``.

    Args:
        backbone: maps [N, C, H, W] to features [N, feat_dim] (``models.build_backbone``).
        feat_dim: backbone feature width.
        dim, mlp_dim: head output / hidden widths (moco-v3 ``--moco-dim 256 --moco-mlp-dim 4096``).
        proj_layers, pred_layers, proj_last_bn, pred_last_bn: head depths (builders.mocov3_builder).
        group_size: views forwarded together, concatenated along the batch (1 = per view).
        momentum_encoder: False makes k the online projector output under no_grad (PatchMix ViT-T).
        key_views: only the first ``key_views`` views go through the target branch (None = all).

    Shapes: forward(views: V x [B, C, H, W]) -> ViewOutputs(p [V,B,dim], k [K,B,dim] (no grad),
    z [V,B,dim], h [V,B,feat_dim]) with K = key_views or V. Computes no loss.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, *, dim: int = 256, mlp_dim: int = 4096,
                 proj_layers: int = 3, pred_layers: int = 2, proj_last_bn: bool = True,
                 pred_last_bn: bool = True, group_size: int = 1, momentum_encoder: bool = True,
                 key_views: int | None = None) -> None:
        super().__init__()
        self.feat_dim, self.dim = feat_dim, dim
        self.group_size, self.key_views = group_size, key_views
        self.backbone = backbone
        self.projector = build_mlp(proj_layers, feat_dim, mlp_dim, dim, last_bn=proj_last_bn)
        self.predictor = build_mlp(pred_layers, dim, mlp_dim, dim, last_bn=pred_last_bn)
        self.momentum_backbone: nn.Module | None = None
        self.momentum_projector: nn.Module | None = None
        if momentum_encoder:
            # a copy starts equal to the online weights, as moco-v3's param_m.copy_(param_b)
            self.momentum_backbone = copy.deepcopy(backbone)
            self.momentum_projector = copy.deepcopy(self.projector)
            _disable_drop_path(self.momentum_backbone)
            for p in self._momentum_params():
                p.requires_grad_(False)
        self._ema: tuple[list[Tensor], list[Tensor]] | None = None  # built on first update

    # ---- the momentum encoder ----
    def _online_params(self) -> list[Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _momentum_params(self) -> list[Tensor]:
        assert self.momentum_backbone is not None and self.momentum_projector is not None
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """theta_m <- m theta_m + (1 - m) theta_online, on parameters only (buffers such as BN
        running statistics are not averaged, as in moco-v3). A no-op without a momentum encoder.

        The parameter lists are built on the first call, after SyncBN conversion and .to(device),
        which keep the Parameter objects (``load_state_dict(assign=True)`` would replace them).
        """
        if self.momentum_backbone is None:
            return
        if self._ema is None:
            online, momentum = self._online_params(), self._momentum_params()
            assert len(online) == len(momentum), "momentum encoder does not mirror the online one"
            self._ema = (momentum, online)  # Parameter objects: .to() swaps their .data in place
        momentum_data, online_data = self._ema
        torch._foreach_mul_(momentum_data, m)
        torch._foreach_add_(momentum_data, online_data, alpha=1.0 - m)

    # ---- forward passes (hooks) ----
    def forward_online(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One online pass: x [N, C, H, W] -> (h [N, feat_dim], z [N, dim], p [N, dim])."""
        h = self.backbone(x)
        z = self.projector(h)
        return h, z, self.predictor(z)

    @torch.no_grad()
    def forward_target(self, x: Tensor) -> tuple[Tensor]:
        """One target pass without gradient: x [N, C, H, W] -> (k [N, dim],)."""
        if self.momentum_backbone is None:
            return (self.projector(self.backbone(x)),)
        assert self.momentum_projector is not None
        return (self.momentum_projector(self.momentum_backbone(x)),)

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        h, z, p = forward_grouped(self.forward_online, views, self.group_size)
        n_keys = len(views) if self.key_views is None else self.key_views
        if not 1 <= n_keys <= len(views):
            raise ValueError(f"key_views={self.key_views} but only {len(views)} views were given")
        # e.g. only the global views go through the teacher (PatchMix, DINO-style multi-crop)
        (k,) = forward_grouped(self.forward_target, views[:n_keys], self.group_size)
        return ViewOutputs(p=p, k=k, z=z, h=h)


__all__ = ["MoCoV3", "forward_grouped", "view_groups"]
