"""The recipes bench_data.py compares, ours and lightly's equivalent of each (the peer)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PIL import Image
from torch import Tensor

from data.normalization import IMAGENET_MEAN, IMAGENET_STD
from data.views import ViewSpec, byol_asymmetric, multicrop, simclr_symmetric

NORMALIZE = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def recipes(size: int, ns_list: Iterable[int]) -> dict[str, list[ViewSpec]]:
    out = {f"byol_asymmetric ns={ns}": byol_asymmetric(size, ns=ns) for ns in ns_list}
    out["simclr_symmetric"] = simclr_symmetric(size)
    return out


def recipes_224(ns_list: Iterable[int] = (1, 4)) -> dict[str, list[ViewSpec]]:
    """V = 2 and ns = 4 (BYOL pair), and PatchMix's ImageNet multi-crop (2 x 224 + 8 x 96)."""
    out = {f"byol_asymmetric ns={ns}": byol_asymmetric(224, ns=ns) for ns in ns_list}
    pair = byol_asymmetric(224, crop_min=0.35, interpolation="bicubic")
    out["patchmix 2x224+8x96"] = multicrop(pair, 8, 96, local_scale=(0.05, 0.35))
    return out


def lightly_transform(name: str, size: int) -> Callable[[Image.Image], list[Tensor]]:
    """lightly's transform with the parameters of our recipe `name` (same jitter, gray, blur,
    solarize probabilities and crop scale; PIL ops per view)."""
    from lightly.transforms import BYOLView1Transform, BYOLView2Transform, SimCLRTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform as LightlyMultiView

    if name == "simclr_symmetric":
        return SimCLRTransform(input_size=size, gaussian_blur=0.5, normalize=NORMALIZE)
    ns = int(name.split("ns=")[1])
    view1 = BYOLView1Transform(input_size=size, normalize=NORMALIZE)
    view2 = BYOLView2Transform(input_size=size, normalize=NORMALIZE)
    return LightlyMultiView([view1] * ns + [view2] * ns)


def lightly_224(name: str) -> Callable[[Image.Image], list[Tensor]]:
    """lightly's per-view PIL pipeline for our 224-px recipe `name`."""
    from lightly.transforms import BYOLView1Transform, BYOLView2Transform
    from lightly.transforms.multi_view_transform import MultiViewTransform as LightlyMultiView

    if not name.startswith("patchmix"):
        return lightly_transform(name, 224)
    view1 = BYOLView1Transform(input_size=224, min_scale=0.35, normalize=NORMALIZE)
    view2 = BYOLView2Transform(input_size=224, min_scale=0.35, normalize=NORMALIZE)
    local = BYOLView1Transform(input_size=96, min_scale=0.05, gaussian_blur=0.5,
                               normalize=NORMALIZE)
    return LightlyMultiView([view1, view2] + [local] * 8)
