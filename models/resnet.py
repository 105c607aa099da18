"""torchvision ResNets with a width knob and the CIFAR stem; the classifier ``fc`` is an Identity.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so torchvision and
moco-v3 (``module.base_encoder.*`` minus ``fc``) state dicts load onto width-64 models.
``forward(x [B, C, H, W]) -> h [B, num_features]`` (global-average-pooled ``layer4`` output).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet as tv


class ResNet(tv.ResNet):
    """torchvision's ResNet whose stage widths are (1, 2, 4, 8) x ``width`` (64 = standard).

    ``cifar_stem`` replaces the 7x7/2 conv + max-pool by a 3x3/1 conv and no pooling (32-px images);
    with ``keep_maxpool`` the max-pool stays (MV-MR's "small_kernel" stem for STL/CIFAR).
    ``stem_padding`` pads that 3x3 conv: 1 keeps the input size (most CIFAR code), 2 gives the
    (H + 2) x (W + 2) maps of solo-learn's CIFAR stem (``solo/methods/base.py``).
    """

    def __init__(self, block: type[tv.BasicBlock | tv.Bottleneck], layers: list[int], *,
                 width: int = 64, cifar_stem: bool = False, zero_init_residual: bool = False,
                 in_chans: int = 3, keep_maxpool: bool = False, stem_padding: int = 1) -> None:
        if width % 8:
            raise ValueError(f"width must be a multiple of 8, got {width}")
        self.width = width  # read by _make_layer, which torchvision's __init__ calls
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        if cifar_stem or width != 64 or in_chans != 3:
            kernel, stride, pad = (3, 1, stem_padding) if cifar_stem else (7, 2, 3)
            self.conv1 = nn.Conv2d(in_chans, width, kernel, stride, pad, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.bn1 = nn.BatchNorm2d(width)  # weight 1, bias 0: torchvision's init
        if cifar_stem and not keep_maxpool:
            self.maxpool = nn.Identity()
        self.num_features = 8 * width * block.expansion
        self.fc = nn.Identity()  # the projector / linear probe replaces it

    def _make_layer(self, block: type[tv.BasicBlock | tv.Bottleneck], planes: int, blocks: int,
                    stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if planes == 64:  # layer1: its input is the stem's `width` channels, not a fixed 64
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, blocks, stride, dilate)


def resnet18(**kw) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); h has 8 x width features (512 at width 64)."""
    return ResNet(tv.BasicBlock, [2, 2, 2, 2], **kw)


def resnet34(**kw) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); h has 8 x width features."""
    return ResNet(tv.BasicBlock, [3, 4, 6, 3], **kw)


def resnet50(**kw) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); h has 32 x width features (2048 at width 64)."""
    return ResNet(tv.Bottleneck, [3, 4, 6, 3], **kw)


__all__ = ["ResNet", "resnet18", "resnet34", "resnet50"]
