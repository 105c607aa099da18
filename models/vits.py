"""Vision Transformers as MoCo v3 trains them (facebookresearch/moco-v3 ``vits.py``), standalone.

Pre-norm blocks (LayerNorm eps 1e-6, qkv attention with bias, MLP ratio 4, GELU), a CLS token, and
either MoCo v3's fixed 2D sin-cos position embedding or PatchMix's learnable one
(``module/vits.py``: trunc-normal 0.02, bicubic interpolation to other grids for multi-crop).
MoCo v3's init: xavier-uniform Linear weights with q, k, v treated as three layers, zero biases,
cls token N(0, 1e-6), xavier-uniform patch projection over its flattened weight. Key names
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}``, ``norm``) match moco-v3's timm-based checkpoints.
``forward(x [B, C, H, W]) -> h [B, embed_dim]``: the final-norm CLS token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 1e4) -> Tensor:
    """MoCo v3's fixed position embedding [1, 1 + grid_h grid_w, dim]; the cls position is 0.

    Per token: [sin(a w), cos(a w), sin(a h), cos(a h)] with a_d = temperature^(-d / (dim/4)).
    As in moco-v3, (w, h) come from ``meshgrid(arange(grid_w), arange(grid_h))`` ("ij") flattened,
    so on a square grid the "w" quarter follows the token's row and the "h" quarter its column.
    """
    if dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for the sin-cos embedding, got {dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(grid_w, dtype=torch.float32),
                                    torch.arange(grid_h, dtype=torch.float32), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w = grid_w.flatten()[:, None] * omega[None]  # [N, dim/4]
    out_h = grid_h.flatten()[:, None] * omega[None]  # [N, dim/4]
    pos = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)  # [N, dim]
    return torch.cat([torch.zeros(1, dim), pos])[None]  # [1, 1 + N, dim]


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability drop_prob (training)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # [B, 1, 1]
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: [B, C, H, W] -> [B, (H/p)(W/p), D] (row-major)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch "
                             f"size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, D/heads]
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D/heads], scale (D/heads)^-1/2
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """MoCo v3 ViT returning the final-norm CLS token.

    Args:
        img_size: training resolution; sets the stored ``pos_embed`` grid (img_size / patch_size).
        pos_embed: "sincos" (fixed, MoCo v3) or "learnable" (trunc-normal 0.02, PatchMix).
        drop_path: stochastic-depth rate of the last block; rates grow linearly from 0.
        stop_grad_conv1: freeze the patch projection at its random init (``--stop-grad-conv1``).
    Other resolutions divisible by patch_size work: sin-cos is recomputed for the new grid,
    learnable embeddings are bicubically interpolated as in PatchMix/DINO.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, pos_embed: str = "sincos",
                 stop_grad_conv1: bool = False) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if pos_embed not in ("sincos", "learnable"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learnable', got {pos_embed!r}")
        self.embed_dim = self.num_features = embed_dim
        self.grid = img_size // patch_size
        self.pos_embed_type = pos_embed
        self._sincos_cache: dict[tuple, Tensor] = {}  # sin-cos tables of other grids (multi-crop)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
        rates = torch.linspace(0, drop_path, depth).tolist()  # stochastic depth grows linearly
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()
        if stop_grad_conv1:
            self.patch_embed.proj.weight.requires_grad_(False)
            self.patch_embed.proj.bias.requires_grad_(False)

    @torch.no_grad()
    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.endswith("qkv"):  # fan as if q, k and v were three Linear layers
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        proj = self.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))  # fans: D, C p^2
        nn.init.zeros_(proj.bias)
        if self.pos_embed_type == "sincos":
            self.pos_embed.copy_(sincos_pos_embed_2d(self.grid, self.grid, self.embed_dim))
            self.pos_embed.requires_grad_(False)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def pos_embed_for(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embedding [1, 1 + grid_h grid_w, D] for a token grid (multi-crop sizes)."""
        if grid_h == grid_w == self.grid:
            return self.pos_embed
        if self.pos_embed_type == "sincos":
            # built on the host once per grid/device/dtype (a per-forward copy would be a sync)
            key = (grid_h, grid_w, self.pos_embed.device, self.pos_embed.dtype)
            if key not in self._sincos_cache:
                table = sincos_pos_embed_2d(grid_h, grid_w, self.embed_dim)
                self._sincos_cache[key] = table.to(self.pos_embed)
            return self._sincos_cache[key]
        n, dim = self.grid, self.embed_dim
        patch = self.pos_embed[:, 1:].reshape(1, n, n, dim).permute(0, 3, 1, 2)  # [1, D, n, n]
        # PatchMix/DINO: +0.1 so that floor(n * scale) hits the target size despite rounding
        patch = F.interpolate(patch, scale_factor=((grid_h + 0.1) / n, (grid_w + 0.1) / n),
                              mode="bicubic")
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)  # [1, N', D]
        return torch.cat([self.pos_embed[:, :1], patch], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens after the final norm: [B, C, H, W] -> [B, 1 + N, D] (CLS first)."""
        p = self.patch_embed.patch_size
        grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p
        x = self.patch_embed(x)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + N, D]
        x = x + self.pos_embed_for(grid_h, grid_w)
        return self.norm(self.blocks(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[:, 0]

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping, for its layer-wise lr decay (main_finetune.py --layer-decay):
        the embeddings are layer 0, block i is layer i + 1, the final norm is the last layer."""
        return {"stem": r"^(?:cls_token|pos_embed|patch_embed)",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay (as timm's ViT)."""
        return {"pos_embed", "cls_token"}


_CONFIGS = {"tiny": (192, 12, 3), "small": (384, 12, 12), "base": (768, 12, 12)}


def _vit(size: str, **kw) -> VisionTransformer:
    embed_dim, depth, num_heads = _CONFIGS[size]
    kw.setdefault("embed_dim", embed_dim)
    kw.setdefault("depth", depth)
    kw.setdefault("num_heads", num_heads)
    return VisionTransformer(**kw)


def vit_tiny(**kw) -> VisionTransformer:
    """ViT-Ti: embed 192, depth 12, 3 heads (PatchMix ViT-T)."""
    return _vit("tiny", **kw)


def vit_small(**kw) -> VisionTransformer:
    """ViT-S as in MoCo v3: embed 384, depth 12, 12 heads (not DeiT's 6)."""
    return _vit("small", **kw)


def vit_base(**kw) -> VisionTransformer:
    """ViT-B: embed 768, depth 12, 12 heads."""
    return _vit("base", **kw)


__all__ = ["VisionTransformer", "sincos_pos_embed_2d", "vit_base", "vit_small", "vit_tiny"]
