"""main_lincls.py: 2 gloo processes equal 1 process on every val image, and the per-paper options."""

import argparse
import json
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import main_lincls
from data.eval_transforms import BatchEval, eval_transform
from models import build_backbone
from models.encoder import inherit_normalisation, ratio
from utils.args import parse_with_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
# 256 train images = 8 global batches of 32; 101 val images: the 2-process val shards are padded
PROBE = ["--random-init", "-a", "resnet18", "--width", "8", "--dataset", "fashion_mnist", "--data",
         FMNIST, "--train-subset", "256", "--val-subset", "101", "-b", "32", "--epochs", "4",
         "--lr", "0.4", "--optimizer", "adam", "--seed", "0", "-j", "0"]
needs_data = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not fetched: bash main.sh test fetches it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_probe(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main_lincls.py"), *PROBE, *extra,
                           "--results_dir", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)["linear_random_init"]
    with open(os.path.join(out, "log_lincls.txt")) as f:
        losses = [json.loads(line)["train_loss"] for line in f]
    return result, losses


@needs_data
@pytest.mark.parametrize("mode", [["--cache-features", "true"], ["--aug-device", "workers"]],
                         ids=["cached", "augmented"])
def test_two_processes_equal_one_on_every_val_image(tmp_path, mode):
    one, one_losses = run_probe(tmp_path / "one", *mode)
    two, two_losses = run_probe(tmp_path / "two", *mode, "--multiprocessing-distributed",
                                "--nproc-cpu", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}")
    for r in (one, two):
        assert r["val_images"] == 101 and r["train_images"] == 256
        assert 1 <= r["best_epoch"] <= 4 and r["top1_best"] >= r["top1"]
    assert one["top1"] > 15.0  # the head learned something, so equality is not trivially chance
    for key in ("top1", "top5", "top1_best", "top5_best", "best_epoch"):
        assert two[key] == pytest.approx(one[key]), key
    # the same global batches: the mean training loss agrees up to float summation order
    assert two_losses == pytest.approx(one_losses, rel=1e-4)


@needs_data
def test_per_paper_options_run_and_keep_the_weights_frozen(tmp_path, monkeypatch):
    """BeCLR's train-mode backbone with MV-MR's augmentation, Nesterov, a step schedule, PyTorch's
    head init, DSF's 128 outputs and PatchMix's bicubic 256/224 val resize, all in one run."""
    argv = [*PROBE, "--epochs", "2", "--backbone-mode", "train", "--train-aug", "mvmr",
            "--optimizer", "nesterov", "--lr", "0.1", "--lr-schedule", "step", "--lr-steps", "1",
            "--head-init", "default", "--head-outputs", "128", "--interpolation", "bicubic",
            "--val-resize-ratio", "256/224", "--results_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["main_lincls.py", *argv])
    parser = argparse.ArgumentParser(parents=[main_lincls.get_args_parser()])
    args = parse_with_config(parser, argv)
    assert args.val_resize_ratio == pytest.approx(256 / 224)
    main_lincls.main(args)  # sanity_check: weights frozen although BN statistics moved
    with open(tmp_path / "results.json") as f:
        r = json.load(f)["linear_random_init"]
    assert r["backbone_mode"] == "train" and r["train_aug"] == "mvmr" and r["val_images"] == 101
    assert 0.0 <= r["top1"] <= r["top5"] <= 100.0


# ============ pieces ============


def test_cached_batches_split_the_one_process_batches_evenly(monkeypatch):
    x, y = torch.arange(11.0)[:, None], torch.arange(11)
    single = [b[1].tolist() for b in main_lincls.cached_batches(x, y, 4, 0, 3)]
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(main_lincls.dist, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(main_lincls.dist, "get_world_size", lambda: 2)
        shards.append([b[1].tolist() for b in main_lincls.cached_batches(x, y, 2, 0, 3)])
    assert len(shards[0]) == len(shards[1]) == 3  # 11 samples padded to 12: no rank waits
    union = [sorted(shards[0][i] + shards[1][i]) for i in range(3)]
    assert union[:2] == [sorted(b) for b in single[:2]]  # the ranks' step-i batches = 1 process's
    assert union[2] == sorted(single[2] + single[0][:1])  # the pad repeats the first sample


def test_lr_schedules():
    args = argparse.Namespace(lr_schedule="step", lr_steps=[60, 80], epochs=100, lr_lag=0)
    assert [main_lincls.lr_at(e, 0.3, args) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx(
        [0.3, 0.3, 0.03, 0.03, 0.003, 0.003])
    args.lr_schedule = "cosine"
    assert main_lincls.lr_at(0, 1.0, args) == 1.0
    assert main_lincls.lr_at(50, 1.0, args) == pytest.approx(0.5)


def _head_args(**kw):
    base = dict(head_outputs=0, head_init="normal", pretrained="", device=torch.device("cpu"))
    return argparse.Namespace(**{**base, **kw})


def test_head_init_and_outputs(tmp_path):
    torch.manual_seed(0)
    head = main_lincls.build_head(_head_args(), 512, 10)
    assert head.out_features == 10 and not head.bias.any()
    assert 0.009 < float(head.weight.detach().std()) < 0.011
    head = main_lincls.build_head(_head_args(head_init="default", head_outputs=128), 512, 10)
    assert head.out_features == 128 and head.bias.any()  # nn.Linear's uniform init
    with pytest.raises(SystemExit, match="below the 10 classes"):
        main_lincls.build_head(_head_args(head_outputs=5), 512, 10)
    probe = {"weight": torch.randn(10, 512), "bias": torch.randn(10)}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {}, "args": {}, "probe": {"head": probe, "optimizer": {}}}, path)
    head = main_lincls.build_head(_head_args(head_init="probe", pretrained=str(path)), 512, 10)
    assert torch.equal(head.weight, probe["weight"]) and torch.equal(head.bias, probe["bias"])
    torch.save({"model": {}, "args": {}}, path)
    with pytest.raises(SystemExit, match="no online probe"):
        main_lincls.build_head(_head_args(head_init="probe", pretrained=str(path)), 512, 10)


def test_train_augmentations():
    assert main_lincls.TRAIN_AUGS["crop"](32)["jitter_p"] == 0.0
    dsf = main_lincls.TRAIN_AUGS["dsf"](32)
    assert dsf["jitter"] == (0.4, 0.4, 0.4, 0.1) and dsf["jitter_p"] == 0.8 and dsf["gray_p"] == 0.2
    assert main_lincls.TRAIN_AUGS["mvmr"](96)["blur_kernel"] == 9  # 2 * int(0.05 * 96) + 1
    assert main_lincls.TRAIN_AUGS["mvmr"](224)["blur_kernel"] == 23


def test_sanity_check_weights_vs_bn_buffers():
    net, _ = build_backbone("resnet18", width=8, img_size=28)
    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 28, 28))  # BN running statistics move
    main_lincls.sanity_check(net, frozen, "train")
    with pytest.raises(RuntimeError, match="running_mean changed"):
        main_lincls.sanity_check(net, frozen, "eval")
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="not frozen"):
        main_lincls.sanity_check(net, frozen, "train")


def test_normalisation_comes_from_the_checkpoint_unless_given():
    args = argparse.Namespace(mean=None, std=[0.5, 0.5, 0.5])
    inherit_normalisation(args, {"mean": (0.1, 0.2, 0.3), "std": (0.9, 0.9, 0.9)})
    assert args.mean == [0.1, 0.2, 0.3] and args.std == [0.5, 0.5, 0.5]  # given: kept
    args = argparse.Namespace()  # no --mean flag at all: still fine
    inherit_normalisation(args, {"mean": None, "std": None})
    assert getattr(args, "mean", None) is None


def test_val_resize_ratio_is_patchmix_resize_then_centre_crop():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    ours = BatchEval(32, mean, std, interpolation="bicubic", resize_ratio=ratio("256/224"))(x)
    big = TF.resize(x.float() / 255, [36], interpolation=TF.InterpolationMode.BICUBIC,
                    antialias=True)
    torch.testing.assert_close(ours, TF.center_crop(big, [32, 32]).clamp(0, 1))
    assert not torch.equal(ours, x.float() / 255)  # 32 -> 36 -> 32 is not the identity
    assert torch.equal(BatchEval(32, mean, std)(x), x.float() / 255)  # default: untouched
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    per_sample = eval_transform(224, mean, std, resize_ratio=1.142857)  # typed, not 256/224
    expected = TF.center_crop(TF.resize(img, [256], antialias=True), [224, 224]).float() / 255
    torch.testing.assert_close(per_sample(img), expected)
    with pytest.raises(argparse.ArgumentTypeError):
        ratio("0")


@pytest.mark.parametrize("change,message", [
    ({"lr_schedule": "step"}, "needs --lr-steps"),
    ({"backbone_mode": "train", "cache_features": True}, "needs --cache-features false"),
    ({"head_init": "probe", "random_init": True}, "needs --pretrained"),
    ({"epochs": 0}, "at least one epoch"),
])
def test_contradictory_flags_are_one_line_errors(change, message):
    args = argparse.ArgumentParser(parents=[main_lincls.get_args_parser()]).parse_args(
        ["--random-init"])
    args.world_size = 2
    for key, value in change.items():
        setattr(args, key, value)
    with pytest.raises(SystemExit, match=message):
        main_lincls.check_args(args)


@pytest.mark.parametrize("saved, stem", [
    ({"method": "beclr", "dataset": "imagenet", "img_size": 224}, (7, True)),  # model_imgnet.py
    ({"method": "beclr", "dataset": "stl10", "img_size": 96}, (3, False)),  # model.py at 96 px
    ({"method": "mvmr", "dataset": "stl10", "img_size": 96, "mvmr_small_kernel": False}, (7, True)),
    ({"method": "simclr", "dataset": "cifar10", "img_size": 32, "cifar_stem_padding": 2}, (3, False)),
])
def test_evaluation_rebuilds_the_pretrained_backbone_variant(tmp_path, saved, stem):
    """Stems decided by the run's dataset or flags (BeCLR, MV-MR small_kernel, solo padding) come
    back from the checkpoint's args; a CIFAR stem on an ImageNet BeCLR run would load the weights
    of a 7x7 conv into a 3x3 one (or silently change padding)."""
    from models.builders import backbone_kwargs
    from models.encoder import build_encoder
    from utils.checkpoint import save_atomic

    run = {"arch": "resnet18", "width": 8, **saved}
    net, _ = build_backbone("resnet18", **backbone_kwargs(run))
    path = str(tmp_path / "ckpt.pth.tar")
    save_atomic({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                 "args": run}, path)
    args = argparse.Namespace(pretrained=path, random_init=False, encoder="online", arch="resnet50",
                              width=64, img_size=None, patch_size=None, method=None,
                              dataset="fashion_mnist", device=torch.device("cpu"))
    encoder, _ = build_encoder(args)
    kernel, maxpool = stem
    assert encoder.conv1.kernel_size == (kernel, kernel)
    assert encoder.conv1.padding == net.conv1.padding
    assert isinstance(encoder.maxpool, torch.nn.MaxPool2d) == maxpool
    for key, value in net.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key


def test_lr_lag_matches_patchmix_stepping_after_the_epoch():
    """visresearch/patchmix main_linear.py:267-268,328-353: CosineAnnealingLR(opt, epochs) stepped
    with lr_scheduler.step(epoch) after epoch `epoch` trains, so epoch e trains at the cosine of e - 1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.08, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10, eta_min=0)
    official = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated epoch argument
        for epoch in range(10):
            official.append(opt.param_groups[0]["lr"])  # train_one_epoch
            sched.step(epoch)
    args = argparse.Namespace(lr_schedule="cosine", lr_steps=[], epochs=10, lr_lag=1)
    assert [main_lincls.lr_at(e, 0.08, args) for e in range(10)] == pytest.approx(official)
    assert official[0] == official[1] == 0.08  # the first two epochs share the base lr
    args.lr_lag = 0
    assert main_lincls.lr_at(1, 0.08, args) < 0.08  # the default: epoch e trains at e's lr
