"""--method mvmr_clip: MV-MR distillation of a frozen CLIP image encoder (models/mvmr_clip.py)."""

import math

import pytest
import torch
from torch import nn

from losses.mvmr import MVMRLoss
from models import build_backbone
from models.mvmr_clip import MVMRCLIP, build_clip_teacher


class TinyTeacher(nn.Module):
    """A stand-in for CLIP's image tower: fixed input size, [B, 3, S, S] -> [B, 12]."""

    image_size = 24

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, stride=2)
        self.seen_sizes = []

    def forward(self, x):
        self.seen_sizes.append(tuple(x.shape[-2:]))
        return 50 * self.conv(x).mean((2, 3))  # CLIP-sized norms: distances above the clamp


def tiny_student(teacher, **kw):
    backbone, feat_dim = build_backbone("resnet18", img_size=16, width=8)
    return MVMRCLIP(backbone, feat_dim, teacher, proj_dims="32-32-16", **kw)


def views(batch=6, size=16):
    return [torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)]


# ============ naive references, written from the official step ============


def naive_dcor(x, y):
    """Distance correlation by loops: distances sqrt(max(|xi - xj|^2, 1e-4)), double centring."""
    n = x.shape[0]

    def centred(v):
        d = [[math.sqrt(max(float(((v[i] - v[j]) ** 2).sum()), 1e-4)) for j in range(n)]
             for i in range(n)]
        row = [sum(d[i]) / n for i in range(n)]
        col = [sum(d[i][j] for i in range(n)) / n for j in range(n)]
        total = sum(row) / n
        return [[d[i][j] - row[i] - col[j] + total for j in range(n)] for i in range(n)]

    a, b = centred(x.double()), centred(y.double())

    def mean(p, q):
        return sum(p[i][j] * q[i][j] for i in range(n) for j in range(n)) / n**2

    return math.sqrt(mean(a, b)) / math.sqrt(math.sqrt(mean(a, a)) * math.sqrt(mean(b, b)))


def official_loss(z, z_orig, clip):
    """clip_self_supervised_module.step: mse + std hinges + (1 - dCor zz) + (1 - dCor z clip)."""
    z, z_orig, clip = z.double(), z_orig.double(), clip.double()
    mse = float(((z_orig - z) ** 2).mean())
    std = float(torch.relu(1 - z.std(0)).mean() + torch.relu(1 - z_orig.std(0)).mean())
    return mse + std + (1 - naive_dcor(z_orig / 32, z / 32)) + (1 - naive_dcor(z / 32, clip))


# ============ tests ============


def test_teacher_factory_is_called_at_the_first_forward_only():
    built = []

    def make():
        built.append(TinyTeacher())
        return built[-1]

    model = tiny_student(make)
    model.to(torch.float32)
    assert built == []  # building (evaluation, inspection) loads no teacher
    model(views())
    model(views())
    assert len(built) == 1 and not built[0].training
    assert not any(p.requires_grad for p in built[0].parameters())


def test_teacher_sees_the_resized_original_and_is_frozen_outside_the_state():
    teacher = TinyTeacher()
    model = tiny_student(teacher)
    x = views()
    out = model(x)
    assert teacher.seen_sizes == [(24, 24)]
    expected = teacher(nn.functional.interpolate(x[0], size=(24, 24), mode="bilinear",
                                                 align_corners=False)) / 32
    torch.testing.assert_close(out.extras["rep_clip"], expected)
    assert not out.extras["rep_clip"].requires_grad
    assert not any(k.startswith(("teacher", "_teacher")) for k in model.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    model.train()
    assert not teacher.training  # the frozen teacher stays in eval mode
    model.double()
    assert teacher.conv.weight.dtype == torch.float64  # .to()/.double() reach the teacher


def test_dcor_terms_and_loss_match_the_official_step():
    teacher = TinyTeacher()
    model = tiny_student(teacher)
    out = model(views(batch=7))
    loss, metrics = MVMRLoss(std_margin=1.0, scale=32.0, representation_sign=-1.0)(out)
    z_orig, z = out.p[0].detach(), out.p[1].detach()
    clip = out.extras["rep_clip"]
    assert float(metrics["dc_clip"]) == pytest.approx(naive_dcor(z / 32, clip), rel=1e-5)
    assert float(metrics["dc_zz"]) == pytest.approx(1 - naive_dcor(z_orig / 32, z / 32), abs=1e-5)
    # the official loss minus its constant 1: same gradient
    assert float(loss.detach()) == pytest.approx(official_loss(z, z_orig, clip) - 1, abs=1e-4)


def test_renormalize_maps_student_statistics_to_the_teacher_s():
    teacher = TinyTeacher()
    stats = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    teacher.image_mean, teacher.image_std = stats[1]  # as open_clip's visual tower carries them
    model = tiny_student(teacher, renormalize=stats[0])
    pixels = torch.rand(4, 3, 24, 24)
    mean, std = (torch.tensor(v)[:, None, None] for v in stats[0])
    t_mean, t_std = (torch.tensor(v)[:, None, None] for v in stats[1])
    got = model.teacher_features((pixels - mean) / std)
    torch.testing.assert_close(got, teacher((pixels - t_mean) / t_std) / 32)


def test_one_training_step_moves_the_student_only():
    teacher = TinyTeacher()
    model = tiny_student(teacher)
    criterion = MVMRLoss(std_margin=1.0, scale=32.0, representation_sign=-1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert all(p is not teacher.conv.weight for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher_before = teacher.conv.weight.clone()
    losses = []
    x = views(batch=8)
    for _ in range(3):
        loss, _ = criterion(model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not torch.equal(before["projector.0.weight"], model.state_dict()["projector.0.weight"])
    assert torch.equal(teacher_before, teacher.conv.weight) and teacher.conv.weight.grad is None


@pytest.mark.slow
def test_open_clip_vit_b16_teacher_without_weights():
    pytest.importorskip("open_clip")
    teacher = build_clip_teacher("ViT-B-16", None, image_size=32)  # random weights: no download
    assert teacher.output_dim == 512 and not teacher.training
    model = tiny_student(teacher)
    out = model(views(batch=4))
    assert out.extras["rep_clip"].shape == (4, 512)
    loss, metrics = MVMRLoss(representation_sign=-1.0)(out)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= float(metrics["dc_clip"]) <= 1


def test_missing_weights_are_a_one_line_error(monkeypatch):
    open_clip = pytest.importorskip("open_clip")

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'laion400m_e32': no network\nmore")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(SystemExit, match="cannot load CLIP ViT-B-16 .laion400m_e32.") as e:
        build_clip_teacher("ViT-B-16", "laion400m_e32")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_main_pretrain_trains_mvmr_clip_and_checkpoints_the_student_only(tmp_path):
    pytest.importorskip("open_clip")
    import glob
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, "main_pretrain.py"), "--method", "mvmr_clip",
           "--clip-pretrained", "none", "--clip-image-size", "32", "-a", "resnet18", "--width", "8",
           "--proj-dims", "32-32-16", "--dataset", "fashion_mnist", "-b", "16", "--epochs", "1",
           "--steps-per-epoch", "2", "--warmup-epochs", "0", "--knn-freq", "0", "--optimizer",
           "adam", "--lr", "1e-3", "--results_dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dc_clip" in proc.stdout
    (path,) = glob.glob(str(tmp_path / "checkpoint_*.pth.tar"))
    state = torch.load(path, weights_only=True)["model"]
    assert any(k.startswith("backbone.") for k in state)
    assert not any("teacher" in k or "visual" in k for k in state)  # a plain MV-MR student
