"""Backbones, heads and the MoCoV3 / SimCLR builders: shapes, freezing, EMA, grouping, key names."""

from __future__ import annotations

import argparse
import math
from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models import resnet50 as tv_resnet50

from models import BACKBONES, build_backbone
from models.builders import mocov3_builder
from models.heads import build_mlp
from models.moco import MoCoV3, view_groups
from models.simclr import SimCLR
from models.vits import DropPath, sincos_pos_embed_2d, vit_small

B, IMG = 4, 32
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 3, "patch_size": 4}


def tiny_backbone(name: str, **kw) -> tuple[nn.Module, int]:
    """CPU-sized backbone: ResNets at width 16, ViTs with 2 blocks of width 48 on 4-px patches."""
    extra = TINY_VIT if name.startswith("vit") else {"width": 16}
    return build_backbone(name, img_size=IMG, **{**extra, **kw})


def tiny_moco(name: str = "resnet18", **kw) -> MoCoV3:
    """The registry's MoCo v3 builder (head depths from the backbone family), at tiny widths."""
    backbone, feat_dim = tiny_backbone(name)
    args = argparse.Namespace(arch=name, moco_dim=8, moco_mlp_dim=16)
    return mocov3_builder(args, backbone, feat_dim, **kw)


def images(n: int, size: int = IMG) -> list[torch.Tensor]:
    return [torch.randn(B, 3, size, size) for _ in range(n)]


# ---------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_output_shape(name):
    model, feat_dim = tiny_backbone(name)
    h = model(torch.randn(2, 3, IMG, IMG))
    assert h.shape == (2, feat_dim)
    expected = {"resnet18": 128, "resnet34": 128, "resnet50": 512}.get(name, 48)
    assert feat_dim == expected == model.num_features


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="resnet18.*vit_tiny"):
        build_backbone("resnet9000")


@pytest.mark.parametrize(("name", "dims"), [("vit_tiny", (192, 3)), ("vit_small", (384, 12)),
                                            ("vit_base", (768, 12))])
def test_vit_configs(name, dims):
    # one block is enough to check the width and head count (ViT-S: 12 heads, as in MoCo v3)
    model, feat_dim = build_backbone(name, img_size=IMG, patch_size=16, depth=1)
    assert (feat_dim, model.blocks[0].attn.num_heads) == dims
    assert len(vit_small(img_size=IMG, patch_size=16).blocks) == 12


def test_cifar_stem():
    model, _ = build_backbone("resnet18", img_size=32, width=16)  # auto: img_size <= 64
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    feats = {}
    model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("l4", o))
    model(torch.randn(1, 3, 32, 32))
    assert feats["l4"].shape[-2:] == (4, 4)  # 32 / 8: only the three strided stages downsample
    imagenet, _ = build_backbone("resnet18", img_size=224, width=16)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    forced, _ = build_backbone("resnet18", img_size=32, width=16, cifar_stem=False)
    assert forced.conv1.kernel_size == (7, 7)


def test_cifar_stem_padding():
    """solo-learn's CIFAR stem pads its 3x3 conv by 2: 32 px -> 34 x 34 maps, 5 x 5 at layer4."""
    model, _ = build_backbone("resnet18", img_size=32, width=16, cifar_stem_padding=2)
    assert model.conv1.padding == (2, 2) and isinstance(model.maxpool, nn.Identity)
    feats = {}
    model.conv1.register_forward_hook(lambda m, i, o: feats.setdefault("stem", o))
    model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("l4", o))
    model(torch.randn(1, 3, 32, 32))
    assert feats["stem"].shape[-2:] == (34, 34) and feats["l4"].shape[-2:] == (5, 5)
    standard, _ = build_backbone("resnet18", img_size=224, width=16, cifar_stem_padding=2)
    assert standard.conv1.padding == (3, 3)  # the ImageNet stem ignores it


def test_method_backbone_defaults_and_flag():
    """Per-method variants that evaluation rebuilds from the run's args (backbone_kwargs)."""
    from models.builders import backbone_kwargs

    def built(**run):
        args = {"img_size": 224, "width": 16, **run}
        return build_backbone("resnet50", **backbone_kwargs(args))[0]

    def zero_init(model):
        return all(not b.bn3.weight.detach().any() for b in model.layer1)

    assert zero_init(built(method="mocov3"))  # main_moco.py: zero_init_residual=True
    assert not zero_init(built(method="simclr"))
    assert not zero_init(built(method="mocov3", zero_init_residual=False))  # the flag wins
    assert zero_init(built(method="simclr", zero_init_residual=True))
    stl = built(method="beclr", dataset="stl10", img_size=96)  # BeCLR model.py at 96 px too
    assert stl.conv1.kernel_size == (3, 3) and isinstance(stl.maxpool, nn.Identity)
    imagenet = built(method="beclr", dataset="imagenet")  # model_imgnet.py: torchvision's stem
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_resnet_zero_init_residual():
    model, _ = build_backbone("resnet50", width=16, zero_init_residual=True)
    blocks = [*model.layer1, *model.layer4]
    assert all(b.bn3.weight.abs().sum() == 0 for b in blocks)


def test_resnet50_matches_torchvision():
    ours, feat_dim = build_backbone("resnet50", img_size=224)
    ref = tv_resnet50()
    ref_state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert list(ours.state_dict()) == list(ref_state)
    ours.load_state_dict(ref_state)  # strict: same names and shapes
    ref.fc = nn.Identity()
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))
    assert feat_dim == 2048


# ---------------------------------------------------------------- ViT
def test_sincos_pos_embed_hand_computed():
    # 2x2 grid, dim 8: omega = [1, 1e4^-1/2]; token 2i + j gets (w, h) = (i, j) (moco-v3's meshgrid)
    omega = [1.0, 1e-2]
    rows = [[0.0] * 8]
    for w, h in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        rows.append([math.sin(w * o) for o in omega] + [math.cos(w * o) for o in omega]
                    + [math.sin(h * o) for o in omega] + [math.cos(h * o) for o in omega])
    expected = torch.tensor([rows])
    torch.testing.assert_close(sincos_pos_embed_2d(2, 2, 8), expected)
    model, _ = build_backbone("vit_tiny", img_size=8, patch_size=4, depth=1, embed_dim=8,
                              num_heads=2)
    torch.testing.assert_close(model.pos_embed.data, expected)
    assert not model.pos_embed.requires_grad


@pytest.mark.parametrize(("size", "patch"), [(28, 4), (32, 4), (32, 2), (224, 16)])
def test_vit_image_sizes(size, patch):
    model, feat_dim = build_backbone("vit_tiny", img_size=size, patch_size=patch, depth=1,
                                     embed_dim=32, num_heads=2)
    assert model.pos_embed.shape == (1, 1 + (size // patch) ** 2, 32)
    assert model(torch.randn(2, 3, size, size)).shape == (2, feat_dim)


@pytest.mark.parametrize("pos_embed", ["sincos", "learnable"])
def test_vit_other_resolution(pos_embed):
    model, _ = tiny_backbone("vit_tiny", pos_embed=pos_embed)
    assert model.pos_embed.requires_grad == (pos_embed == "learnable")
    assert model.pos_embed_for(8, 8) is model.pos_embed
    small = model.pos_embed_for(4, 4)  # a 16-px local crop
    assert small.shape == (1, 17, 48)
    torch.testing.assert_close(small[:, 0], model.pos_embed[:, 0])  # cls position kept
    if pos_embed == "sincos":
        torch.testing.assert_close(small, sincos_pos_embed_2d(4, 4, 48))
    else:  # bicubic interpolation: a per-channel constant grid stays constant, gradient flows
        small.sum().backward()
        assert model.pos_embed.grad.abs().sum() > 0
        with torch.no_grad():
            model.pos_embed[:, 1:] = torch.arange(48.0)
        const = torch.arange(48.0).expand(1, 24, 48)
        torch.testing.assert_close(model.pos_embed_for(4, 6)[:, 1:], const)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 48)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 3, 18, 18))


def test_vit_init():
    model, _ = tiny_backbone("vit_tiny")
    qkv = model.blocks[0].attn.qkv.weight  # [3D, D]: bound of a D -> D layer, not of D -> 3D
    bound = math.sqrt(6.0 / (48 + 48))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    proj = model.patch_embed.proj.weight
    assert proj.abs().max() <= math.sqrt(6.0 / (3 * 16 + 48))
    assert model.cls_token.abs().max() < 1e-4


def test_stop_grad_conv1_freezes_patch_projection():
    model, _ = tiny_backbone("vit_tiny", stop_grad_conv1=True)
    proj = model.patch_embed.proj
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    before = proj.weight.clone(), proj.bias.clone(), model.blocks[0].attn.qkv.weight.clone()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    model(torch.randn(2, 3, IMG, IMG)).square().sum().backward()
    assert proj.weight.grad is None and proj.bias.grad is None
    assert model.blocks[0].attn.qkv.weight.grad is not None
    opt.step()
    assert torch.equal(proj.weight, before[0]) and torch.equal(proj.bias, before[1])
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before[2])


def test_vit_loads_mocov3_checkpoint_keys():
    """A moco-v3 checkpoint (timm ViT + head under module.base_encoder.) loads after stripping."""
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    ref = timm_vit.VisionTransformer(img_size=IMG, patch_size=4, embed_dim=48, depth=2,
                                     num_heads=3, qkv_bias=True, num_classes=16,
                                     norm_layer=partial(nn.LayerNorm, eps=1e-6))
    ref.head = build_mlp(3, 48, 16, 8)  # moco-v3 replaces the head by the projector
    ckpt = {f"module.base_encoder.{k}": v for k, v in ref.state_dict().items()}
    ckpt.update({"module.momentum_encoder.cls_token": ref.cls_token, "module.predictor.0.weight":
                 torch.zeros(16, 8)})
    prefix = "module.base_encoder."
    state = {k[len(prefix):]: v for k, v in ckpt.items()
             if k.startswith(prefix) and not k.startswith(prefix + "head.")}
    ours, _ = tiny_backbone("vit_tiny")
    missing, unexpected = ours.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, IMG, IMG)
    torch.testing.assert_close(ours(x), ref.forward_head(ref.forward_features(x), pre_logits=True))


def test_drop_path():
    layer = DropPath(0.5)
    x = torch.ones(1000, 3, 2)
    y = layer(x)
    per_sample = y[:, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (y == y[:, :1, :1]).all()  # one decision per sample
    assert torch.equal(layer.eval()(x), x)
    model, _ = tiny_backbone("vit_tiny", drop_path=0.2)
    assert [b.drop_path.drop_prob for b in model.blocks] == pytest.approx([0.0, 0.2])


# ---------------------------------------------------------------- heads
def test_build_mlp_structure():
    mlp = build_mlp(3, 10, 20, 5)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in mlp if isinstance(m, nn.Linear))
    assert mlp[1].affine and not mlp[-1].affine
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [20, 20, 5]
    no_last = build_mlp(2, 5, 20, 5, last_bn=False)
    assert isinstance(no_last[-1], nn.Linear) and len(no_last) == 4
    assert build_mlp(1, 4, 9, 3, bias=True)[0].bias is not None


def linear_count(mlp: nn.Sequential) -> int:
    return sum(isinstance(m, nn.Linear) for m in mlp)


def test_mocov3_head_depths_follow_the_backbone_family():
    """docs/methods.md §1.1: ViT projector 3 layers, ResNet 2; the ResNet predictor has no last BN."""
    resnet, vit = tiny_moco("resnet18"), tiny_moco("vit_tiny")
    assert (linear_count(resnet.projector), linear_count(resnet.predictor)) == (2, 2)
    assert (linear_count(vit.projector), linear_count(vit.predictor)) == (3, 2)
    assert isinstance(resnet.projector[-1], nn.BatchNorm1d) and isinstance(vit.projector[-1],
                                                                           nn.BatchNorm1d)
    assert isinstance(resnet.predictor[-1], nn.Linear)
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d) and not vit.predictor[-1].affine


# ---------------------------------------------------------------- MoCoV3
@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
@pytest.mark.parametrize("n_views", [1, 2, 4])
def test_moco_shapes(name, n_views):
    model = tiny_moco(name)
    out = model(images(n_views))
    feat_dim = model.feat_dim
    assert out.p.shape == out.k.shape == out.z.shape == (n_views, B, 8)
    assert out.h.shape == (n_views, B, feat_dim)
    assert out.p.requires_grad and not out.k.requires_grad and out.k.grad_fn is None


def test_moco_key_views_and_multicrop():
    model = tiny_moco("vit_tiny", key_views=2, group_size=2)
    out = model(images(2) + images(3, size=16))  # 2 globals + 3 locals of another resolution
    assert out.p.shape == (5, B, 8) and out.k.shape == (2, B, 8)
    with pytest.raises(ValueError, match="key_views"):
        tiny_moco("resnet18", key_views=3)(images(2))


def test_moco_gradients_reach_online_only():
    model = tiny_moco("resnet18")
    assert all(not p.requires_grad for p in model.momentum_backbone.parameters())
    assert all(not p.requires_grad for p in model.momentum_projector.parameters())
    out = model(images(2))
    (out.p * out.k.flip(0)).sum().backward()
    for module in (model.backbone, model.projector, model.predictor):
        assert all(p.grad is not None for p in module.parameters())
    for module in (model.momentum_backbone, model.momentum_projector):
        assert all(p.grad is None for p in module.parameters())


def test_momentum_starts_equal_and_follows_ema_rule():
    model = tiny_moco("resnet18")
    online = [*model.backbone.parameters(), *model.projector.parameters()]
    momentum = [*model.momentum_backbone.parameters(), *model.momentum_projector.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(online, momentum, strict=True))
    with torch.no_grad():  # move the online weights away, as an optimizer step would
        for p in online:
            p.add_(torch.randn_like(p))
    model.train()
    model(images(2))  # BN running stats of both encoders change here, not in update_momentum
    before = [p.clone() for p in momentum]
    buffers = [b.clone() for b in model.momentum_backbone.buffers()]
    for m in (0.9, 0.99):
        model.update_momentum(m)
        for old, new, target in zip(before, momentum, online, strict=True):
            torch.testing.assert_close(new, m * old + (1 - m) * target, rtol=1e-6, atol=1e-7)
        before = [p.clone() for p in momentum]
    after = list(model.momentum_backbone.buffers())
    assert all(torch.equal(a, b) for a, b in zip(buffers, after, strict=True))
    model.update_momentum(0.0)  # m = 0 copies the online weights
    assert all(torch.allclose(a, b) for a, b in zip(online, momentum, strict=True))


def test_momentum_drop_path_disabled():
    backbone, feat_dim = tiny_backbone("vit_tiny", drop_path=0.3)
    model = MoCoV3(backbone, feat_dim, dim=8, mlp_dim=16)
    assert model.backbone.blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert all(b.drop_path.drop_prob == 0.0 for b in model.momentum_backbone.blocks)


def test_moco_without_momentum_encoder():
    model = tiny_moco("resnet18", momentum_encoder=False)
    assert model.momentum_backbone is None
    model.update_momentum(0.9)  # no-op
    out = model(images(2))
    torch.testing.assert_close(out.k, out.z)  # same weights, same per-view BN batch statistics
    assert not out.k.requires_grad and out.z.requires_grad


def test_view_groups():
    views = images(2) + images(3, size=16)
    assert view_groups(views, 1) == [(i, i + 1) for i in range(5)]
    assert view_groups(views, 2) == [(0, 2), (2, 4), (4, 5)]
    assert view_groups(views, 8) == [(0, 2), (2, 5)]  # a resolution change closes a group


def test_group_size_sets_batchnorm_statistics():
    x1, x2 = images(2)
    model = tiny_moco("resnet18", group_size=2)
    model.train()
    out = model([x1, x2])
    h = model.backbone(torch.cat([x1, x2]))  # one forward of the concatenated pair
    torch.testing.assert_close(out.h, h.view(2, B, -1))
    k = model.momentum_projector(model.momentum_backbone(torch.cat([x1, x2])))
    torch.testing.assert_close(out.k, k.view(2, B, -1))
    per_view = tiny_moco("resnet18", group_size=1)
    per_view.load_state_dict(model.state_dict())
    out1 = per_view([x1, x2])
    torch.testing.assert_close(out1.h[0], per_view.backbone(x1))
    assert not torch.allclose(out1.h, out.h)  # BN statistics differ between the two choices


# ---------------------------------------------------------------- SimCLR
@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
@pytest.mark.parametrize("n_views", [1, 2, 4])
def test_simclr_shapes(name, n_views):
    backbone, feat_dim = tiny_backbone(name)
    model = SimCLR(backbone, feat_dim, build_mlp(2, feat_dim, 16, 8))
    out = model(images(n_views))
    assert out.k is None and out.p.shape == out.z.shape == (n_views, B, 8)
    assert out.h.shape == (n_views, B, feat_dim)
    torch.testing.assert_close(out.p, out.z)  # no predictor: p is z


def test_simclr_predictor_and_per_view_forward():
    backbone, feat_dim = tiny_backbone("resnet18")
    model = SimCLR(backbone, feat_dim, build_mlp(2, feat_dim, 16, 8),
                   predictor=build_mlp(2, 8, 16, 6, last_bn=False))
    x1, x2 = images(2)
    out = model([x1, x2])
    assert out.p.shape == (2, B, 6) and out.z.shape == (2, B, 8)
    torch.testing.assert_close(out.h[1], backbone(x2))  # BN statistics of view 2 alone
    out.p.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
