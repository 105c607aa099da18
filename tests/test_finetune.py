"""main_finetune.py: timm wiring (layer-decay groups, Mixup/CutMix targets, EMA, schedules) against
timm's own objects or closed forms; 2 gloo processes == 1 process; kill -9 + --resume auto is
bit-exact; every configs/finetune/*.yaml runs shrunk on the bundled data; and (slow) a pretrained
encoder fine-tuned on 5 % of the labels beats the same encoder at random init.
"""

import argparse
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.optim._param_groups import param_groups_layer_decay

import main_finetune
from models.vits import VisionTransformer
from utils.args import parse_with_config
from utils.checkpoint import list_checkpoints, load_checkpoint
from utils.finetune import (
    Classifier,
    build_ema,
    build_mixup,
    build_optimizer,
    build_scheduler,
    set_lr,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
needs_data = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")),
    reason="bundled Fashion-MNIST missing (bash main.sh test fetches it)")
# a 12-block ViT-Ti on 28 px with 7-px patches (16 tokens): fast on CPU, and a LayerNorm model, so
# 2 processes without SyncBN compute what 1 process computes
TINY = ["--random-init", "-a", "vit_tiny", "--patch-size", "7", "--img-size", "28",
        "--dataset", "fashion_mnist", "--data", FMNIST, "-j", "0", "--seed", "0",
        "--train-subset", "512", "--val-subset", "200", "--print-freq", "1"]  # fmt: skip


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser("t", parents=[main_finetune.get_args_parser()])
    return parse_with_config(parser, list(argv))


def small_vit(**kw) -> VisionTransformer:
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                             pos_embed="learnable", **kw)


# ============ timm wiring ============


def test_layer_decay_groups_equal_timms_for_its_own_vit():
    """lr_scale and weight decay per parameter: our wrapper + ViT vs timm's ViT of that shape."""
    ours = Classifier(small_vit(), 32, 10)
    theirs = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10)

    def table(model, strip=""):
        groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay(),
                                          layer_decay=0.75)
        names = {id(p): n.replace(strip, "") for n, p in model.named_parameters()}
        return {names[id(p)]: (g["lr_scale"], g["weight_decay"])
                for g in groups for p in g["params"]}

    mine, ref = table(ours, "backbone."), table(theirs)
    assert mine == ref
    assert mine["head.weight"] == (1.0, 0.05) and mine["cls_token"] == (0.75**4, 0.0)


def test_optimizer_and_cosine_lr_follow_the_layer_scales():
    args = parse("--random-init", "--layer-decay", "0.5", "--warmup-epochs", "1", "--epochs", "4",
                 "--sched-per-epoch", "true", "--sched-epoch-lag", "true")
    args.lr_effective = 1e-3
    optimizer = build_optimizer(Classifier(small_vit(), 32, 10), args)
    scheduler = build_scheduler(optimizer, args, iters=7)
    lrs = [set_lr(optimizer, scheduler, e, 0, 7, args) for e in range(4)]
    # epoch 0 runs at the warmup start, epoch e at the schedule's value for e - 1 (DeiT's late step)
    cosine = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 4)) for t in (1, 2)]
    assert lrs == pytest.approx([1e-6, 1e-6, *cosine])
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(lrs[-1] * group["lr_scale"])


def test_mvmr_schedule_is_a_per_epoch_cosine_of_period_the_batch_count():
    args = parse("--random-init", "--sched", "mvmr")
    args.lr_effective = 1e-4
    optimizer = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    lrs = [set_lr(optimizer, None, e, 3, 4, args) for e in range(9)]
    expected = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.Adam(
        torch.nn.Linear(2, 2).parameters(), lr=1e-4), T_max=4)
    reference = []
    for _ in range(9):  # stepped once per epoch, past T_max: the cosine comes back up
        reference.append(expected.get_last_lr()[0])
        expected.optimizer.step()
        expected.step()
    assert lrs == pytest.approx(reference, abs=1e-12)


def test_mixup_targets_are_timms_and_the_convex_mix_of_smoothed_labels():
    args = parse("--random-init", "--mixup", "0.8", "--cutmix", "0", "--smoothing", "0.1")
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    np.random.seed(0)
    xm, ym = build_mixup(args, 5)(x.clone(), y)
    np.random.seed(0)
    timm_mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=5)
    xr, yr = timm_mixup(x.clone(), y)
    assert torch.equal(xm, xr) and torch.equal(ym, yr)
    lam = float(((xm[0] - x[-1]) / (x[0] - x[-1])).median())  # x' = lam x + (1 - lam) x.flip(0)
    smooth = torch.full((6, 5), 0.1 / 5).scatter_(1, y[:, None], 1 - 0.1 + 0.1 / 5)
    assert torch.allclose(ym, lam * smooth + (1 - lam) * smooth.flip(0), atol=1e-5)


def test_cutmix_targets_weigh_labels_by_pasted_area():
    args = parse("--random-init", "--mixup", "0", "--cutmix", "1.0", "--smoothing", "0")
    x, y = torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    x[:, 0] = torch.arange(4.0)[:, None, None]  # image b is the constant b
    np.random.seed(1)
    xm, ym = build_mixup(args, 4)(x, y)
    kept = float((xm[0] == 0).float().mean())  # image 0 keeps the area outside the pasted box
    assert ym[0, 0] == pytest.approx(kept) and ym[0, 3] == pytest.approx(1 - kept)


def test_ema_update_is_the_exponential_average():
    args = parse("--random-init", "--model-ema", "true", "--model-ema-decay", "0.9")
    model = torch.nn.Linear(3, 2)
    ema = build_ema(model, args)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * model.weight)


# ============ runs ============


def run(out: str, *extra: str, status: int = 0) -> str:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune.py"), *TINY,
                           "--results_dir", out, *extra], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == status, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def results(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
@needs_data
def test_two_gloo_processes_give_the_one_process_top1(tmp_path):
    flags = ["-b", "32", "--epochs", "2", "--steps-per-epoch", "3", "--mixup", "0", "--cutmix",
             "0", "--drop-path", "0", "--label-fraction", "0.5"]  # fmt: skip
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(one, *flags)
    run(two, *flags, "--multiprocessing-distributed", "--nproc-cpu", "2", "--dist-url",
        f"tcp://127.0.0.1:{29500 + os.getpid() % 1000}")
    a, b = results(one)["finetune_random_init"], results(two)["finetune_random_init"]
    assert a["val_images"] == b["val_images"] == 200 and a["train_images"] == b["train_images"]
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"]


@pytest.mark.slow
@needs_data
def test_sigkill_and_resume_auto_continue_bit_exactly(tmp_path):
    """Mixup, RandAugment, RandomErasing, drop path and the EMA all draw random numbers: the
    resumed run must redraw them exactly."""
    flags = ["-b", "32", "--epochs", "2", "--steps-per-epoch", "4", "--save-freq-steps", "1",
             "--keep-checkpoints", "0", "--model-ema", "true", "--drop-path", "0.1",
             "--label-fraction", "0.5"]  # fmt: skip
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    run(ref, *flags)
    os.makedirs(out)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_finetune.py"), *TINY,
                             "--results_dir", out, *flags], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while len(list_checkpoints(out)) < 3:  # killed inside epoch 1, after its third step
        assert proc.poll() is None and time.time() < deadline, "run ended or stalled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "resumed from" in run(out, *flags, "--resume", "auto")
    final = "checkpoint_0002_000000.pth.tar"
    a, b = load_checkpoint(os.path.join(ref, final)), load_checkpoint(os.path.join(out, final))
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    kind = "finetune_random_init"
    assert results(ref)[kind]["top1"] == results(out)[kind]["top1"]


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "finetune", "*.yaml")))


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c)[:-5] for c in CONFIGS])
def test_every_finetune_config_runs_shrunk(config, tmp_path, one_thread):
    """The recipe's own flags, on a small model, 2 steps, bundled data (in-process)."""
    with open(config) as f:
        vit = "arch: vit" in f.read()
    shrink = ["-a", "vit_tiny", "--patch-size", "8"] if vit else ["-a", "resnet18", "--width", "8"]
    args = parse("--config", config, "--random-init", *shrink, "--img-size", "32", "--dataset",
                 "fashion_mnist", "--data", FMNIST, "-b", "16", "--epochs", "1",
                 "--steps-per-epoch", "2", "--train-subset", "2000", "--val-subset", "32",
                 "-j", "0",
                 "--amp", "off", "--results_dir", str(tmp_path))  # fmt: skip
    main_finetune.main(args)
    record = results(str(tmp_path))["finetune_random_init"]
    assert record["val_images"] == 32 and 0 <= record["top1"] <= 100
    assert os.path.isfile(tmp_path / "label_subset.txt") == (args.label_fraction < 1)


def test_a_pretraining_directory_is_refused(tmp_path):
    """Fine-tuning there would prune the pretraining checkpoints (same file names)."""
    from utils.checkpoint import checkpoint_path, save_atomic

    save_atomic({"epoch": 1, "model": {}}, checkpoint_path(str(tmp_path), 1))
    with pytest.raises(SystemExit, match="holds pretraining checkpoints"):
        main_finetune.main(parse("--random-init", "--results_dir", str(tmp_path)))
    assert os.path.isfile(checkpoint_path(str(tmp_path), 1))


# ============ learning (slow) ============


# The learning budget: SimCLR pretraining with the bundled recipe for the steps at which its kNN
# beats random init (tests/test_end_to_end.py), then fine-tuning on 5 % of the labels (3000 images,
# class-balanced) against the same fine-tuning at random init. Measured gap: docs/finetune.md.
PRETRAIN_STEPS = 150
FINETUNE_EPOCHS = 3
FINETUNE = ["--label-fraction", "0.05", "-b", "128", "--epochs", "EPOCHS", "--opt", "adam",
            "--lr", "1e-3", "--weight-decay", "0", "--warmup-epochs", "0", "--min-lr", "0",
            "--train-aug", "simple", "--crop-min", "0.2", "--mixup", "0", "--cutmix", "0",
            "--smoothing", "0", "--val-subset", "2000", "--dataset", "fashion_mnist", "--data",
            FMNIST, "-j", "0", "--seed", "0", "--print-freq", "100"]  # fmt: skip
MARGIN = 3.5  # about half the gap measured at this budget (docs/finetune.md)


def finetune_flags(epochs: int) -> list[str]:
    return [str(epochs) if f == "EPOCHS" else f for f in FINETUNE]


@pytest.mark.slow
@needs_data
def test_pretrained_encoder_fine_tunes_better_than_random_init_on_5_percent(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}

    def script(name: str, *args: str) -> None:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, name), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=3600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    pre, ours, base = (str(tmp_path / d) for d in ("pre", "ours", "base"))
    script("main_pretrain.py", "--config", os.path.join(ROOT, "configs", "bundled", "simclr.yaml"),
           "--data", FMNIST, "-b", "128", "--epochs", "1", "--train-subset", "0",
           "--steps-per-epoch", str(PRETRAIN_STEPS), "--warmup-epochs", "0.05", "--knn-freq", "0",
           "--seed", "0", "--amp", "off", "--results_dir", pre)  # fmt: skip
    ckpt = os.path.join(pre, "checkpoint_0001_000000.pth.tar")
    script("main_finetune.py", "--pretrained", ckpt, *finetune_flags(FINETUNE_EPOCHS),
           "--results_dir", ours)
    script("main_finetune.py", "--random-init", "-a", "resnet18", "--width", "16",
           *finetune_flags(FINETUNE_EPOCHS), "--results_dir", base)  # fmt: skip
    a = results(ours)["finetune"]["top1"]
    b = results(base)["finetune_random_init"]["top1"]
    print(f"fine-tuned on 5 % of the labels: pretrained {a:.2f} vs random init {b:.2f}")
    assert a > b + MARGIN, (a, b)
