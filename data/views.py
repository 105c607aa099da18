"""What views each method trains on: `ViewSpec` (one view's augmentation), the view recipes, the
per-method table `METHOD_VIEWS`, and the flags that override any field of a recipe per side.

A recipe is a list of `Side`s: a side is one augmentation distribution and the number of views
drawn from it (MoCo v3: view 1 x ns and view 2 x ns; PatchMix ImageNet: two global views and the
local crops; MV-MR: the original view and the augmented view). `expand` turns the sides into the
side-major list of `ViewSpec` that the transforms consume, `[t1 x ns, t2 x ns, local crops ...]`
(STYLE B2).

Every field printed by `describe` can be set from the command line or a --config file without
editing code: `--flip-p`, `--crop-scale MIN MAX`, `--jitter B C S H`, `--jitter-p`, `--gray-p`,
`--blur-p`, `--solarize-p`. One value (one group of 2 or 4 for the tuples) sets every augmented
side; one per augmented side sets each in order. An un-augmented side (MV-MR's original view) is
never changed. Not given: the method's official value.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Sequence

INTERPOLATIONS = ("bilinear", "bicubic")
RANDAUGMENT_BINS = 31  # torchvision's default num_magnitude_bins


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation parameters of ONE view (MoCo v3 / BYOL vocabulary).

    `crop=False` means no augmentation at all: the image is only resized to `size` (the "original
    view" of MV-MR, see `data.eval_transforms.resize_for_eval`). Probabilities are per sample.
    `solarize_threshold` is on the uint8 scale (PIL ImageOps.solarize inverts pixels >= 128).

    `randaugment_p`, `randaugment_ops`, `randaugment_magnitude`: torchvision's
    `RandAugment(num_ops, magnitude)` (31 magnitude bins, nearest interpolation, fill 0), applied
    with probability `randaugment_p` right after the crop. From DSF's CIFAR recipe (Jeon789/DSF
    `train_moco_cifar_multiview.py`: "RandAugment p=0.5" with the defaults num_ops=2,
    magnitude=9); off (p=0) by default, so the other recipes are unchanged.

    `pad`: None (default) crops with RandomResizedCrop(scale, ratio, interpolation); an int p >= 0
    crops with torchvision's `RandomCrop(size, padding=p)` instead (zeros padded on every side,
    padding_mode constant, a uniform size x size window, no resizing; scale, ratio and
    interpolation unused): MV-MR's `cifar` policy, `RandomCrop(32, padding=4)`.
    """

    size: int
    crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: int = 128
    randaugment_p: float = 0.0
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    pad: int | None = None

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"ViewSpec.size must be positive, got {self.size}")
        if self.pad is not None and (not isinstance(self.pad, int) or self.pad < 0
                                     or not self.crop):
            raise ValueError(f"ViewSpec.pad must be None or an int >= 0 on a cropped view, "
                             f"got {self.pad}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"ViewSpec.interpolation must be one of {sorted(INTERPOLATIONS)}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p", "randaugment_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"ViewSpec.{name} must be a probability, got {getattr(self, name)}"
                )
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(
                f"ViewSpec.blur_kernel must be odd and positive, got {self.blur_kernel}"
            )
        if not isinstance(self.randaugment_ops, int) or self.randaugment_ops < 0:
            raise ValueError(
                f"ViewSpec.randaugment_ops must be a non-negative int, got {self.randaugment_ops}"
            )
        if not isinstance(self.randaugment_magnitude, int) or not (
            0 <= self.randaugment_magnitude < RANDAUGMENT_BINS
        ):
            raise ValueError(
                f"ViewSpec.randaugment_magnitude must be an int in [0, {RANDAUGMENT_BINS - 1}], "
                f"got {self.randaugment_magnitude}"
            )

    @property
    def kernel_size(self) -> int:
        """The blur kernel actually used (see data/per_sample.py's docstring for the default)."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        return min(2 * math.ceil(3 * self.blur_sigma[1]) + 1, 2 * self.size - 1)


class Side(NamedTuple):
    """One augmentation distribution of a recipe and how many views are drawn from it."""

    name: str
    spec: ViewSpec
    count: int = 1


def expand(sides: Sequence[Side]) -> list[ViewSpec]:
    """The side-major list of view specs: [side 1 x count, side 2 x count, ...]."""
    return [side.spec for side in sides for _ in range(side.count)]


# ============ generic recipes (lists of ViewSpec, side-major) ============


def byol_asymmetric(size: int, crop_min: float = 0.08, ns: int = 1,
                    interpolation: str = "bilinear", blur: bool = True) -> list[ViewSpec]:
    """MoCo v3 / BYOL asymmetric pair, side-major: [view1 x ns, view2 x ns].

    view1: blur p=1.0; view2: blur p=0.1 and solarize p=0.2. `blur=False` drops the blur (the
    32-px CIFAR variants of solo-learn); PatchMix keeps it on CIFAR and uses bicubic interpolation.
    """
    view1 = ViewSpec(size, scale=(crop_min, 1.0), interpolation=interpolation,
                     blur_p=1.0 if blur else 0.0)
    view2 = replace(view1, blur_p=0.1 if blur else 0.0, solarize_p=0.2)
    return [view1] * ns + [view2] * ns


def simclr_symmetric(size: int, n_views: int = 2,
                     scale: tuple[float, float] = (0.08, 1.0)) -> list[ViewSpec]:
    """SimCLR's symmetric recipe (solo-learn augmentations/symmetric.yaml): `n_views` identical
    specs, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, gray 0.2, blur p 0.5 at every size, no solarize."""
    spec = ViewSpec(size, scale=scale, jitter=(0.8, 0.8, 0.8, 0.2), gray_p=0.2, blur_p=0.5)
    return [spec] * n_views


def multicrop(global_specs: Sequence[ViewSpec], n_local: int, local_size: int,
              local_scale: tuple[float, float] = (0.05, 0.35), local_blur_p: float = 0.5
              ) -> list[ViewSpec]:
    """Append `n_local` local crops after the global views (PatchMix `MultiCropsTransform`).

    Local crops copy the first global spec's jitter/gray/flip/interpolation, with blur p=0.5 and no
    solarize.
    """
    local = replace(global_specs[0], size=local_size, scale=local_scale, blur_p=local_blur_p,
                    blur_kernel=None, solarize_p=0.0)
    return list(global_specs) + [local] * n_local


def original_view(size: int) -> ViewSpec:
    """The un-augmented view (MV-MR `ValTransform`): resize only."""
    return ViewSpec(size, crop=False)


def _pair(name: str, specs: Sequence[ViewSpec], count: int) -> list[Side]:
    return [Side(f"{name} {i + 1}", spec, count) for i, spec in enumerate(specs)]


# ============ the methods' recipes: args -> sides ============


def mocov3_views(args: argparse.Namespace) -> list[Side]:
    """MoCo v3 main_moco.py (also DSF, SNCLR and solo-learn NNCLR's asymmetric.yaml): the BYOL
    pair, x ns per side; no blur at <= 64 px (solo-learn cifar/augmentations/asymmetric.yaml)."""
    pair = byol_asymmetric(args.img_size, crop_min=args.crop_min, blur=args.img_size > 64)
    return _pair("view", pair, args.ns)


def simclr_views(args: argparse.Namespace) -> list[Side]:
    """solo-learn's symmetric recipe for CIFAR and ImageNet-100 alike, x ns per side."""
    specs = simclr_symmetric(args.img_size, n_views=2, scale=(args.crop_min, 1.0))
    return _pair("view", specs, args.ns)


def beclr_views(args: argparse.Namespace) -> list[Side]:
    """BeCLR data_aug/transformation.py: two identical views; blur only when size > 100."""
    spec = ViewSpec(args.img_size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                    gray_p=0.2, blur_p=0.5 if args.img_size > 100 else 0.0, solarize_p=0.0)
    return _pair("view", [spec, spec], 1)


MVMR_POLICIES = ("auto", "custom", "cifar20", "cifar")


def mvmr_views(args: argparse.Namespace) -> list[Side]:
    """MV-MR src/transform/transform.py:37-74: [original, augmented]; --mvmr-policy auto is the
    "cifar20" policy at <= 64 px, "custom" above (blur always, kernel 2 * int(0.05 * size) + 1);
    "cifar" is RandomCrop(32, padding=4) + flip only (the CIFAR-100 distillation)."""
    size, policy = args.img_size, getattr(args, "mvmr_policy", "auto")
    if policy == "auto":
        policy = "cifar20" if size <= 64 else "custom"
    if policy == "cifar":
        aug = ViewSpec(size, pad=4, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    elif policy == "cifar20":
        aug = ViewSpec(size, scale=(0.2, 1.0), interpolation="bicubic",
                       jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.1, blur_p=0.0)
    else:
        aug = ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2, blur_p=1.0,
                       blur_kernel=2 * int(0.05 * size) + 1)
    return [Side("original", original_view(size)), Side("augmented", aug)]


def patchmix_views(args: argparse.Namespace) -> list[Side]:
    """PatchMix module/augmentation.py: the BYOL pair with bicubic crops (blur kept at 32 px),
    + local crops on ImageNet (scale (local_crop_min, crop_min), blur 0.5, no solarize)."""
    pair = byol_asymmetric(args.img_size, crop_min=args.crop_min, interpolation="bicubic")
    sides = _pair("global", pair, 1)
    if args.local_crops:
        local = multicrop(pair, 1, args.local_crop_size,
                          local_scale=(args.local_crop_min, args.crop_min))[-1]
        sides.append(Side("local", local, args.local_crops))
    return sides


def mocov2_views(args: argparse.Namespace) -> list[Side]:
    """MoCo v2 CIFAR demo as DSF's train_moco_cifar*.py: one recipe for both branches: crop,
    RandAugment (p 0.5), jitter (0.4, 0.4, 0.4, 0.1), gray, blur 0.5, flip."""
    if args.method == "mocov2" and args.ns != 1:
        raise SystemExit("error: --method mocov2 takes one crop per branch (--ns 1)")
    spec = ViewSpec(args.img_size, scale=(args.crop_min, 1.0), jitter=(0.4, 0.4, 0.4, 0.1),
                    jitter_p=0.8, gray_p=0.2, blur_p=0.5, randaugment_p=args.randaugment_p)
    return _pair("branch", [spec, spec], args.ns)


Recipe = Callable[[argparse.Namespace], list[Side]]

# --method -> the views it trains on
METHOD_VIEWS: dict[str, Recipe] = {
    "mocov3": mocov3_views,
    "dsf": mocov3_views,
    "snclr": mocov3_views,
    "nnclr": mocov3_views,
    "simclr": simclr_views,
    "beclr": beclr_views,
    "mvmr": mvmr_views,
    "mvmr_clip": mvmr_views,  # the same [original, augmented] pair as MV-MR
    "patchmix": patchmix_views,
    "mocov2": mocov2_views,
    "mocov2_dsf": mocov2_views,
}

# main_lincls.py --train-aug -> the probe's training view, after RandomResizedCrop + flip:
# ViewSpec fields for an input size. Kept with the pretraining recipes, so that the evaluation
# script names no method.
TRAIN_AUGS: dict[str, Callable[[int], dict]] = {
    "crop": lambda size: dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0),  # moco-v3, PatchMix, solo
    "dsf": lambda size: dict(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.0),
    "mvmr": lambda size: dict(jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2, blur_p=1.0,
                              blur_sigma=(0.1, 2.0), blur_kernel=2 * int(0.05 * size) + 1),
}

# ============ per-side overrides from the command line ============

# flag -> (ViewSpec field, values per side)
OVERRIDES: dict[str, tuple[str, int]] = {
    "flip_p": ("flip_p", 1), "crop_scale": ("scale", 2), "jitter": ("jitter", 4),
    "jitter_p": ("jitter_p", 1), "gray_p": ("gray_p", 1), "blur_p": ("blur_p", 1),
    "solarize_p": ("solarize_p", 1),
}


def add_view_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "views: one value for every augmented side, or one per side (default: the method's "
        "official recipe; the run prints the resolved views)")
    g.add_argument("--flip-p", nargs="+", type=float, default=None, metavar="P",
                   help="horizontal flip probability (default: the recipe's, 0.5)")
    g.add_argument("--crop-scale", nargs="+", type=float, default=None, metavar="MIN MAX",
                   help="RandomResizedCrop scale range, 2 numbers per side (overrides --crop-min)")
    g.add_argument("--jitter", nargs="+", type=float, default=None, metavar="B C S H",
                   help="ColorJitter brightness contrast saturation hue, 4 numbers per side")
    g.add_argument("--jitter-p", nargs="+", type=float, default=None, metavar="P",
                   help="ColorJitter probability (0 = no colour jitter)")
    g.add_argument("--gray-p", nargs="+", type=float, default=None, metavar="P",
                   help="RandomGrayscale probability")
    g.add_argument("--blur-p", nargs="+", type=float, default=None, metavar="P",
                   help="GaussianBlur probability")
    g.add_argument("--solarize-p", nargs="+", type=float, default=None, metavar="P",
                   help="Solarize probability")


def _values(flag: str, raw: object, width: int, names: list[str]) -> list:
    """Per-side values of one override: 1 group for every side or one group per side."""
    values = [float(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw])]
    groups = len(values) // width
    if len(values) % width or groups not in (1, len(names)):
        what = f"{width} numbers" if width > 1 else "1 value"
        raise SystemExit(f"error: --{flag.replace('_', '-')} takes {what} for every side or "
                         f"{what} per side ({len(names)} sides here: {', '.join(names)}); "
                         f"got {len(values)}")
    chunks = [values[i * width:(i + 1) * width] for i in range(groups)]
    chunks = [tuple(c) if width > 1 else c[0] for c in chunks]
    return chunks * len(names) if groups == 1 else chunks


def apply_overrides(sides: Sequence[Side], args: argparse.Namespace) -> list[Side]:
    """The recipe with every --flip-p ... --solarize-p given in args applied per augmented side."""
    augmented = [i for i, side in enumerate(sides) if side.spec.crop]
    names = [sides[i].name for i in augmented]
    out = list(sides)
    for flag, (field, width) in OVERRIDES.items():
        raw = getattr(args, flag, None)
        if raw is None or not augmented:
            continue
        for i, value in zip(augmented, _values(flag, raw, width, names)):
            if field == "scale" and out[i].spec.pad is not None:
                raise SystemExit(f"error: --crop-scale: side {out[i].name!r} is a padded "
                                 "RandomCrop (no scale)")
            if field == "scale" and not 0.0 < value[0] <= value[1] <= 1.0:
                raise SystemExit(f"error: --crop-scale {value[0]} {value[1]}: need "
                                 "0 < MIN <= MAX <= 1")
            try:
                out[i] = out[i]._replace(spec=replace(out[i].spec, **{field: value}))
            except ValueError as e:  # a probability outside [0, 1]
                raise SystemExit(f"error: --{flag.replace('_', '-')}: {e}") from None
    return out


def resolve_sides(args: argparse.Namespace) -> list[Side]:
    """The sides --method trains on, with the command line's overrides applied."""
    return apply_overrides(METHOD_VIEWS[args.method](args), args)


def describe(sides: Sequence[Side]) -> list[str]:
    """One line per side: every field that the flags can set, plus size and interpolation."""
    lines = []
    for side in sides:
        s = side.spec
        head = f"{side.name} x{side.count}: {s.size} px"
        if not s.crop:
            lines.append(f"{head}, resized only (no augmentation)")
            continue
        blur = f"blur {s.blur_p:g}" + (f" (sigma {s.blur_sigma[0]:g}-{s.blur_sigma[1]:g}, "
                                       f"kernel {s.kernel_size})" if s.blur_p else "")
        crop = (f"crop scale ({s.scale[0]:g}, {s.scale[1]:g}) {s.interpolation}"
                if s.pad is None else f"random crop padding {s.pad}")
        parts = [crop,
                 f"flip {s.flip_p:g}",
                 "jitter ({}) p {:g}".format(", ".join(f"{v:g}" for v in s.jitter), s.jitter_p),
                 f"gray {s.gray_p:g}", blur, f"solarize {s.solarize_p:g}"]
        if s.randaugment_p:
            parts.insert(1, f"randaugment({s.randaugment_ops}, {s.randaugment_magnitude}) "
                            f"p {s.randaugment_p:g}")
        lines.append(f"{head}, " + ", ".join(parts))
    return lines
