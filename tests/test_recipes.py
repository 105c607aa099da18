"""Every paper recipe (configs/*.yaml and its main.sh evaluation) runs, shrunk, on the bundled data.

For each configs/NAME.yaml except quickstart.yaml: the config is loaded, every method, optimizer,
loss and augmentation value is kept, and only what cannot run on 2 CPU cores in seconds is changed
(`shrink` below: the dataset, 1 epoch of 2 steps of 16 images, fp32, a ResNet-18 at width 8 or a
ViT-T/7 on 28 px, smaller MLP heads). The shrunk YAML is written to tmp_path and passed with
--config, so main_pretrain.py parses the recipe's own flags. Then the evaluation commands of
main.sh's NAME function (main_knn.py and/or main_lincls.py) run on the checkpoint with their own
flags, on small subsets and for 1 epoch. The scripts run in this process, as their __main__ blocks
do; what they change globally (print on rank 0, signal handlers) is put back after each test.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shlex

import pytest
import yaml
from helpers import run_script, script_process_state

from data import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
CONFIGS = sorted(os.path.basename(p)[:-5]
                 for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
RECIPES = [name for name in CONFIGS if name != "quickstart"]  # already a bundled-data run

# ============ shrinking ============

BATCH = 16  # divides every recipe's queue / bank (4096, 65536, 128000) and --bn-splits 8
IMG = 28  # the bundled images' size: no resize
VIT_PATCH = 7  # 4 x 4 = 16 tokens; PatchMix mixes patches of the same size
# launch and site keys: a shrunk run is one process
DIST = {"multiprocessing_distributed", "world_size", "rank", "dist_url", "nproc_cpu",
        "dist_timeout", "data", "results_dir", "config", "resume"}


def shrink(cfg: dict) -> dict:
    """The recipe with only the dataset, size, length, precision and model size changed."""
    out = {k: v for k, v in cfg.items() if k not in DIST}
    out.update(dataset="fashion_mnist", epochs=1, steps_per_epoch=2, batch_size=BATCH,
               train_subset=64, val_subset=64, img_size=IMG, amp="off",
               moco_mlp_dim=256)  # MoCo v3 heads: 4096 hidden -> 256
    if cfg.get("arch", "resnet50").startswith("vit"):
        out.update(arch="vit_tiny", patch_size=VIT_PATCH)
        if "mix_size" in cfg:  # PatchMix: the ViT patch size; local crops a multiple of it
            out["mix_size"] = VIT_PATCH
        if cfg.get("local_crops"):
            out["local_crop_size"] = 2 * VIT_PATCH
    else:
        out.update(arch="resnet18", width=8)
    if cfg["method"] in ("mvmr", "mvmr_clip"):
        out["proj_dims"] = "256-256-256"  # official 8192-8192-8192 (the default when not set)
    if cfg["method"] == "mvmr_clip":  # a random CLIP teacher at 32 px: no weight download here
        out.update(clip_pretrained="none", clip_image_size=32)
    if cfg.get("accum_steps", 1) > 1:  # keep accumulating, on micro-batches of 8
        out["accum_steps"] = 2
    return out


# ============ main.sh: each function's evaluation commands ============


def main_sh_commands() -> dict[str, list[tuple[str, list[str]]]]:
    """{function: [(script, arguments), ...]} for the python commands of every main.sh function."""
    with open(os.path.join(ROOT, "main.sh")) as f:
        text = f.read().replace("\\\n", " ")
    commands: dict[str, list[tuple[str, list[str]]]] = {}
    for name, body in re.findall(r"^([a-z0-9_]+)\(\) \{(.*?)^\}", text, flags=re.M | re.S):
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            for i, w in enumerate(words):
                if w.endswith(".py") and os.path.basename(w).startswith("main_"):
                    commands.setdefault(name, []).append((os.path.basename(w)[:-3], words[i + 1:]))
                    break
    return commands


COMMANDS = main_sh_commands()
# evaluation flags the shrunk run sets itself (the backbone comes from the checkpoint)
EVAL_VALUED = {"--dataset", "--data", "--pretrained", "--results_dir", "--epochs", "-b",
               "--batch-size", "-a", "--arch", "--width", "--patch-size", "--img-size",
               "--dist-url", "--world-size", "--rank", "--train-subset", "--val-subset"}
EVAL_SWITCHES = {"--multiprocessing-distributed"}


def eval_argv(words: list[str]) -> list[str]:
    kept, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in EVAL_VALUED:
            skip = True
        elif w not in EVAL_SWITCHES:
            kept.append(w)
    return kept


def knn_ks(words: list[str]) -> list[int]:
    if "--nb-knn" not in words:
        return [10, 20, 100, 200]  # main_knn.py's default
    ks = []
    for w in words[words.index("--nb-knn") + 1:]:
        if w.startswith("-"):
            break
        ks.append(int(w))
    return ks


# ============ running the scripts in this process ============


@pytest.fixture(scope="module", autouse=True)
def bundled_data():
    if fashion_mnist.locate(FMNIST) is None:  # datasets/fashion-mnist, or Debian's copy
        if os.environ.get("CI"):
            pytest.fail(f"Fashion-MNIST missing under {FMNIST}: run the README test command "
                        "(bash main.sh test), which fetches it")
        pytest.skip("Fashion-MNIST not fetched: bash main.sh test fetches it")


@pytest.fixture(scope="module")
def loaded_once():
    """Decode each split once for the whole module (0.6 s and 141 MB per train split otherwise);
    nothing writes into a dataset's tensors, so the runs can share them."""
    return functools.cache(fashion_mnist.load)


@pytest.fixture(autouse=True)
def restore_process_state(monkeypatch, loaded_once):
    monkeypatch.setattr(fashion_mnist, "load", loaded_once)
    with script_process_state(monkeypatch):
        yield


# ============ the test ============

XFAIL: dict[str, str] = {}  # recipe -> reason: a bug in the code, reported to the engineer


def params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n])) if n in XFAIL
            else n for n in names]


@pytest.mark.parametrize("recipe", params(RECIPES))
def test_recipe_runs_shrunk(recipe, tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "configs", f"{recipe}.yaml")) as f:
        cfg = yaml.safe_load(f)
    shrunk = tmp_path / f"{recipe}.yaml"
    shrunk.write_text(yaml.safe_dump(shrink(cfg), sort_keys=False))
    out = str(tmp_path / "run")
    run_script("main_pretrain", ["--config", str(shrunk), "--data", FMNIST, "--results_dir", out],
               monkeypatch)
    ckpt = os.path.join(out, "checkpoint_0001_000000.pth.tar")
    assert os.path.isfile(ckpt), os.listdir(out)
    with open(os.path.join(out, "results.json")) as f:
        record = json.load(f)
    assert record["method"] == cfg["method"] and record["dataset"] == "fashion_mnist"
    assert {"wall_time_s", "images_per_s", "knn_top1_monitor"} <= set(record["pretrain"])
    assert record["pretrain"]["epochs"] == 1

    evaluations = [(s, w) for s, w in COMMANDS.get(recipe, []) if s != "main_pretrain"]
    assert evaluations, f"main.sh {recipe}() evaluates nothing"
    for script, words in evaluations:
        argv = [*eval_argv(words), "--pretrained", ckpt, "--dataset", "fashion_mnist", "--data",
                FMNIST, "--results_dir", out]
        if script == "main_knn":
            argv += ["--train-subset", "256", "--val-subset", "64"]
        else:
            assert script == "main_lincls", script
            argv += ["--epochs", "1", "-b", str(BATCH), "--train-subset", "64",
                     "--val-subset", "64"]
        run_script(script, argv, monkeypatch)
        with open(os.path.join(out, "results.json")) as f:
            record = json.load(f)
        if script == "main_knn":
            assert set(record["knn"]["top1"]) == {str(min(k, 256)) for k in knn_ks(words)}
            assert all(0.0 <= v <= 100.0 for v in record["knn"]["top1"].values())
        else:
            assert record["linear"]["epochs"] == 1
            assert 0.0 <= record["linear"]["top1"] <= record["linear"]["top5"] <= 100.0
