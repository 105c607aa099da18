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

from collections.abc import Callable

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
        backbone, feat_dim, proj_dims: as MVMR.
        teacher: image encoder [B, 3, S, S] -> [B, E], or a function returning one (called at the
            first forward: building the model for evaluation or inspection loads no CLIP weights).
            Frozen and kept in eval mode.
        renormalize: None feeds the student's normalised original view as it is (official), or the
            (mean, std) of the student's input, re-normalised to the teacher's image_mean/image_std.

    Shapes: as MVMR, plus extras["rep_clip"] [B, E] = teacher(resize(original)) / 32.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int,
                 teacher: nn.Module | Callable[[], nn.Module], *,
                 proj_dims: str = "8192-8192-8192",
                 renormalize: tuple[tuple, tuple] | None = None) -> None:
        super().__init__(backbone, feat_dim, proj_dims=proj_dims, representations=None)
        # a list, not an attribute nn.Module registers: the teacher is in no state_dict,
        # no optimizer and no DDP bucket
        self._teacher: list[nn.Module] = []
        self._make_teacher = teacher if not isinstance(teacher, nn.Module) else None
        if isinstance(teacher, nn.Module):
            self._teacher.append(teacher.eval().requires_grad_(False))
        self.renormalize = renormalize

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            self._teacher.append(self._make_teacher().eval().requires_grad_(False))
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):
        if self._teacher:  # device and dtype moves reach a built teacher
            self._teacher[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def _channel(self, values, like: Tensor) -> Tensor:  # [3, 1, 1], broadcast over [B, 3, H, W]
        return torch.as_tensor(values, device=like.device, dtype=like.dtype)[:, None, None]

    @torch.no_grad()
    def teacher_features(self, x_orig: Tensor) -> Tensor:
        """[B, C, H, W] original view -> [B, E] teacher embedding / 32."""
        teacher, x = self.teacher, x_orig
        param = next(teacher.parameters())
        if param.device != x.device:  # built lazily, after the student moved
            teacher.to(x.device)
        if self.renormalize is not None:
            mean, std = (self._channel(v, x) for v in self.renormalize)
            t_mean, t_std = (self._channel(v, x) for v in (teacher.image_mean, teacher.image_std))
            x = (x * std + mean - t_mean) / t_std
        x = F.interpolate(x, size=teacher_size(teacher), mode="bilinear", align_corners=False)
        return teacher(x.to(param.dtype)).float() / TEACHER_SCALE

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        out = super().forward(views)
        out.extras["rep_clip"] = self.teacher_features(views[0])
        return out


__all__ = ["MVMRCLIP", "build_clip_teacher"]
