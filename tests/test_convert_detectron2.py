"""tools/convert_to_detectron2.py: a ResNet-50 of this suite in detectron2's weight format."""

import pickle

import numpy as np
import pytest
import torch

from models import build_backbone
from tools import convert_to_detectron2 as conv

NORM = ("weight", "bias", "running_mean", "running_var")


def detectron2_r50_shapes() -> dict[str, tuple]:
    """detectron2's ResNet-50 backbone (build_resnet_backbone, DEPTH 50): every tensor's shape."""
    shapes = {"stem.conv1.weight": (64, 3, 7, 7)}
    shapes.update({f"stem.conv1.norm.{n}": (64,) for n in NORM})
    in_ch = 64
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        mid = 64 * 2 ** (stage - 2)
        out = 4 * mid
        for b in range(blocks):
            pre = f"res{stage}.{b}"
            block_in = in_ch if b == 0 else out
            convs = {"conv1": (mid, block_in, 1, 1), "conv2": (mid, mid, 3, 3),
                     "conv3": (out, mid, 1, 1)}
            if b == 0:
                convs["shortcut"] = (out, block_in, 1, 1)
            for name, shape in convs.items():
                shapes[f"{pre}.{name}.weight"] = shape
                shapes.update({f"{pre}.{name}.norm.{n}": (shape[0],) for n in NORM})
        in_ch = out
    return shapes


def save_checkpoint(path, backbone, momentum=None):
    model = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
    if momentum is not None:
        model.update({f"momentum_backbone.{k}": v for k, v in momentum.state_dict().items()})
    model["projector.0.weight"] = torch.zeros(2, 2)
    torch.save({"model": model, "args": {"arch": "resnet50", "method": "mocov3"}}, path)


def test_resnet50_has_exactly_detectron2_keys_and_shapes(tmp_path):
    online, _ = build_backbone("resnet50", img_size=224)
    momentum, _ = build_backbone("resnet50", img_size=224)
    ckpt, out = tmp_path / "ckpt.pth.tar", tmp_path / "r50.pkl"
    save_checkpoint(ckpt, online, momentum)
    for encoder, source in (("online", online), ("momentum", momentum)):
        conv.main([str(ckpt), str(out), "--encoder", encoder])
        with open(out, "rb") as f:
            obj = pickle.load(f)
        assert obj["matching_heuristics"] is True and isinstance(obj["__author__"], str)
        weights = obj["model"]
        expected = detectron2_r50_shapes()
        assert len(expected) == 265
        assert set(weights) == set(expected)
        assert {k: v.shape for k, v in weights.items()} == expected
        assert all(isinstance(v, np.ndarray) for v in weights.values())
        ref = source.state_dict()
        np.testing.assert_array_equal(weights["res4.5.conv2.norm.running_var"],
                                      ref["layer3.5.bn2.running_var"].numpy())
        np.testing.assert_array_equal(weights["res3.0.shortcut.weight"],
                                      ref["layer2.0.downsample.0.weight"].numpy())
        np.testing.assert_array_equal(weights["stem.conv1.norm.bias"], ref["bn1.bias"].numpy())


def test_names_follow_moco_converter():
    assert conv.detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert conv.detectron2_name("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert conv.detectron2_name("layer1.0.bn3.weight") == "res2.0.conv3.norm.weight"
    assert conv.detectron2_name("layer4.0.downsample.1.bias") == "res5.0.shortcut.norm.bias"


@pytest.mark.parametrize("arch,kw,match", [
    ("vit_tiny", dict(img_size=32, patch_size=4), "no ResNet backbone"),
    ("resnet18", dict(img_size=32), "CIFAR-style conv1"),
    ("resnet18", dict(img_size=224, width=16), "width-16"),
])
def test_unsupported_backbones_are_one_line_errors(tmp_path, arch, kw, match):
    backbone, _ = build_backbone(arch, **kw)
    save_checkpoint(tmp_path / "c.pth.tar", backbone)
    with pytest.raises(SystemExit, match=match) as e:
        conv.main([str(tmp_path / "c.pth.tar"), str(tmp_path / "o.pkl")])
    assert "\n" not in str(e.value) and str(e.value).startswith("error:")
    assert not (tmp_path / "o.pkl").exists()


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        conv.main([str(tmp_path / "none.pth"), str(tmp_path / "o.pkl")])
