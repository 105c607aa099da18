"""MV-MR distillation of a frozen CLIP image encoder into a ResNet (``--method mvmr_clip``).

vkinakh/mv-mr ``src/model/clip_self_supervised_module.py::step``: the student is MV-MR's encoder
(backbone + the 8192-8192-8192 projector, both views with gradient); the teacher is CLIP's image
tower (open_clip ``create_model(...).visual``, frozen), fed the *original* view bilinearly resized
to the teacher's input size (224 for ViT-B-16) and divided by 32. The loss is MV-MR's with the
teacher embedding as the only representation, taken with sign -1: official ``1 - dCor(z/32, t/32)``
equals our ``-dCor`` up to the constant 1 (docs/protocols.md). No hand-crafted representations.

The teacher is held outside the module tree: it is in no ``state_dict`` (checkpoints stay the
student's size, and evaluation loads them as any MV-MR run), no optimizer and no DDP bucket, but it
follows ``.to()``/``.half()`` with the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.base import ViewOutputs
from models.mvmr import MVMR

TEACHER_SCALE = 32.0  # the official division of the CLIP embedding ("FP16 trick")


def build_clip_teacher(model_name: str = "ViT-B-16", pretrained: str | None = "laion400m_e32",
                       image_size: int | None = None) -> nn.Module:
    """open_clip's image tower, frozen and in eval mode. pretrained None or "none": random weights
    (tests); image_size: force another input size (tests; the official run keeps 224)."""
    try:
        import open_clip
    except ImportError:
        raise SystemExit("error: --method mvmr_clip needs open_clip: "
                         "pip install open_clip_torch") from None
    tag = None if pretrained in (None, "", "none") else pretrained
    try:
        model = open_clip.create_model(model_name, pretrained=tag, force_image_size=image_size,
                                       require_pretrained=tag is not None)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SystemExit(f"error: cannot load CLIP {model_name} ({tag}): {first}; download it "
                         "once on a machine with internet (docs/protocols.md) or set "
                         "HF_HOME to a copied cache") from None
    teacher = model.visual.eval().requires_grad_(False)
    del model  # the text tower is never used
    return teacher


def teacher_size(teacher: nn.Module) -> tuple[int, int]:
    size = getattr(teacher, "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


class MVMRCLIP(MVMR):
    """MV-MR student + frozen CLIP teacher; forward([original, augmented]) -> ViewOutputs.

    Args:
        backbone, feat_dim, proj_dims, small_kernel, zero_init_residual: as MVMR.
        teacher: image encoder [B, 3, S, S] -> [B, E] (frozen; build_clip_teacher).
        renormalize: None feeds the student's normalised original view as it is (official), or
            ((mean, std) of the student's input, (mean, std) the teacher expects) to re-normalise.

    Shapes: as MVMR, plus extras["rep_clip"] [B, E] = teacher(resize(original)) / 32.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, teacher: nn.Module, *,
                 proj_dims: str = "8192-8192-8192", small_kernel: bool = False,
                 zero_init_residual: bool = True,
                 renormalize: tuple[tuple, tuple] | None = None) -> None:
        super().__init__(backbone, feat_dim, proj_dims=proj_dims, representations=None,
                         small_kernel=small_kernel, zero_init_residual=zero_init_residual)
        self._teacher = (teacher.eval().requires_grad_(False),)  # a tuple: not a submodule
        self.renormalize = renormalize

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):
        self.teacher._apply(fn, *args, **kwargs)  # device and dtype moves reach the teacher
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def teacher_features(self, x_orig: Tensor) -> Tensor:
        """[B, C, H, W] original view -> [B, E] teacher embedding / 32."""
        x = x_orig
        if self.renormalize is not None:
            (mean, std), (t_mean, t_std) = self.renormalize
            def channel(v: tuple) -> Tensor:  # [3, 1, 1], broadcast over [B, 3, H, W]
                return torch.tensor(v, device=x.device, dtype=x.dtype)[:, None, None]

            x = (x * channel(std) + channel(mean) - channel(t_mean)) / channel(t_std)
        x = F.interpolate(x, size=teacher_size(self.teacher), mode="bilinear", align_corners=False)
        dtype = next(self.teacher.parameters()).dtype
        return self.teacher(x.to(dtype)).float() / TEACHER_SCALE

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        out = super().forward(views)
        out.extras["rep_clip"] = self.teacher_features(views[0])
        return out


__all__ = ["MVMRCLIP", "build_clip_teacher"]
