"""Bring your own data: every method's bundled recipe, then kNN and the linear probe, on a small
ImageFolder tree through `--dataset folder`.

The tree is what users bring: colour and grayscale images, PNG and JPEG, a 16-bit PNG, odd and
unequal sizes, uneven classes and one corrupt file (--on-bad-image skip). The normalisation comes
from `--compute-stats`, as docs/own_data.md says. Each configs/bundled/<method>.yaml (one per entry
of models.methods.METHODS, so a new method is covered the day it is registered) runs for 2 steps of
8 images at 32 px; main_knn.py and main_lincls.py (--cache-features true, 1 epoch) then evaluate
the checkpoint. The scripts run in this process, as their __main__ blocks do.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import json
import os
import shlex

import numpy as np
import pytest
import yaml
from helpers import run_script, script_process_state
from PIL import Image

from models.methods import METHODS
from utils.args import parse_with_config
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = {"ant": 7, "bee": 5, "cat": 4}  # + one corrupt file in bee/: 17 train files
VAL = {"ant": 3, "bee": 2, "cat": 2}
CLASSES = sorted(TRAIN)
# what the bundled recipes cannot do on a 17-image tree in seconds, or offline
SHRINK = dict(dataset="folder", img_size=32, batch_size=8, epochs=1, steps_per_epoch=2,
              workers=0, amp="off", on_bad_image="skip", print_freq=1)
OFFLINE = {"clip_pretrained": "none"}  # random CLIP teacher: no weight download in tests


def _image(path: str, kind: str, rng: np.random.Generator) -> None:
    h, w = (int(s) for s in rng.integers(17, 45, size=2))  # odd, unequal sizes
    if kind == "gray":
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
    elif kind == "gray16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("own") / "tree")
    rng = np.random.default_rng(0)
    kinds = [("rgb", "jpg"), ("gray", "png"), ("rgb", "png"), ("gray", "jpg"), ("gray16", "png")]
    for split, sizes in (("train", TRAIN), ("val", VAL)):
        for c, n in sizes.items():
            os.makedirs(f"{root}/{split}/{c}")
            for i in range(n):
                kind, ext = kinds[i % len(kinds)]
                _image(f"{root}/{split}/{c}/{i:02d}.{ext}", kind, rng)
    with open(f"{root}/train/bee/03_corrupt.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff not really a JPEG")
    return root


@pytest.fixture(autouse=True)
def restore_process_state(monkeypatch):
    with script_process_state(monkeypatch):
        yield


@pytest.fixture(scope="module")
def stats_flags(tree) -> list[str]:
    """--mean R G B --std R G B of the tree, from the last line --compute-stats prints."""
    import contextlib
    import io

    out = io.StringIO()
    module = importlib.import_module("main_pretrain")
    parser = argparse.ArgumentParser("main_pretrain", parents=[module.get_args_parser()])
    argv = ["--dataset", "folder", "--data", tree, "--compute-stats", "100", "-j", "0",
            "--on-bad-image", "skip", "--results_dir", os.path.join(os.path.dirname(tree), "st")]
    saved_print = builtins.print
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.main(parse_with_config(parser, argv))
    builtins.print = saved_print
    assert exit_info.value.code in (0, None)
    flags = shlex.split(out.getvalue().strip().splitlines()[-1])
    assert flags[0] == "--mean" and flags[4] == "--std" and len(flags) == 8, flags
    return flags


def test_compute_stats_sees_the_grayscale_images(stats_flags):
    mean, std = [float(v) for v in stats_flags[1:4]], [float(v) for v in stats_flags[5:]]
    assert all(0.2 < m < 0.8 for m in mean) and all(0.1 < s < 0.5 for s in std)


def _recipe(method: str, out: str) -> str:
    path = os.path.join(ROOT, "configs", "bundled", f"{method}.yaml")
    assert os.path.isfile(path), f"--method {method} has no bundled recipe {path}"
    with open(path) as f:
        cfg = yaml.safe_load(f)
    cfg.update(SHRINK)
    cfg.update({k: v for k, v in OFFLINE.items() if k in cfg})
    shrunk = os.path.join(out, f"{method}.yaml")
    os.makedirs(out, exist_ok=True)
    with open(shrunk, "w") as f:
        yaml.safe_dump(cfg, f)
    return shrunk


def _results(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_pretrains_and_evaluates_on_an_image_folder(method, tree, stats_flags, tmp_path,
                                                           monkeypatch):
    out = str(tmp_path / "run")
    argv = ["--config", _recipe(method, out), "--data", tree, "--results_dir", out, *stats_flags]
    args = run_script("main_pretrain", argv, monkeypatch)
    assert args.class_names == CLASSES and args.pretrain_images == 17
    ckpt = os.path.join(out, "checkpoint_0001_000000.pth.tar")
    saved = load_checkpoint(ckpt)["args"]  # what evaluations and users read back
    assert saved["class_names"] == CLASSES
    assert saved["mean"] == [float(v) for v in stats_flags[1:4]]
    record = _results(out)
    assert record["dataset"] == "folder" and record["pretrain"]["epochs"] == 1
    assert record["num_classes"] == len(CLASSES) and record["class_names"] == CLASSES
    if args.online_probe:  # MV-MR's recipe: the probe has the tree's 3 classes
        assert 0.0 <= record["pretrain"]["online_probe_top1"] <= 100.0

    common = ["--pretrained", ckpt, "--dataset", "folder", "--data", tree, "--results_dir", out,
              "-j", "0", "--on-bad-image", "skip"]
    knn = run_script("main_knn", [*common, "-b", "8"], monkeypatch)
    assert knn.class_names == CLASSES and (knn.train_images, knn.val_images) == (17, 7)
    record = _results(out)["knn"]
    assert (record["train_images"], record["val_images"]) == (17, 7)
    assert all(0.0 <= v <= 100.0 for v in record["top1"].values())
    linear = run_script("main_lincls", [*common, "-b", "8", "--epochs", "1", "--cache-features",
                                        "true"], monkeypatch)
    assert linear.class_names == CLASSES
    record = _results(out)["linear"]
    assert record["train_images"] == 17 and 0.0 <= record["top1"] <= 100.0


def test_retrieval_grid_names_the_class_folders(tree, tmp_path, monkeypatch):
    from tools import retrieval_grid

    drawn = {}
    monkeypatch.setattr(retrieval_grid, "draw_grid", lambda *a: drawn.update(names=a[2], rows=a[3]))
    retrieval_grid.main(["--random-init", "-a", "resnet18", "--width", "8", "--img-size", "32",
                         "--dataset", "folder", "--data", tree, "-j", "0", "--on-bad-image", "skip",
                         "--queries", "4", "--neighbours", "3", "--out", str(tmp_path / "g.png")])
    assert len(drawn["names"]) == 4 and set(drawn["names"]) <= set(CLASSES)
    assert all(len(row) == 3 and set(row) <= set(CLASSES) for row in drawn["rows"])
