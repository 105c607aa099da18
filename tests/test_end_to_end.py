"""End to end on the bundled Fashion-MNIST: main_pretrain -> main_knn -> main_lincls, resume.

Each method pretrains a width-16 ResNet-18 for a few hundred steps and must beat the kNN top-1 of
the same encoder at random init by a margin chosen from measurements (README, "Tests").
"""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
# A sparse bank (2000 training images) with k = 200 (InstDisc/DSF's monitor vote): random conv
# features are nearly as good as pixels when the bank is dense, so a dense bank measures pixels, not
# learning. Measured gaps are in README ("Tests").
SUBSETS = ["--train-subset", "2000", "--val-subset", "2000"]
KNN = ["--nb-knn", "200"]
TINY = ["-a", "resnet18", "--width", "16", "--dataset", "fashion_mnist", "--data", FMNIST]


def have_data() -> bool:
    return os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))


@pytest.fixture(scope="module", autouse=True)
def bundled_data():
    if not have_data():
        if os.environ.get("CI"):
            pytest.fail(f"Fashion-MNIST missing under {FMNIST}: run the README test command "
                        "(bash main.sh test), which fetches it")
        pytest.skip("Fashion-MNIST not fetched: bash main.sh test fetches it")


def run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc.stdout


def results(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def random_init_knn(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("random"))
    run("main_knn.py", "--random-init", *TINY, *SUBSETS, *KNN, "--seed", "0", "--results_dir", out)
    return results(out)["knn_random_init"]["top1"]["200"]


def bundled(method: str) -> list[str]:
    """The method's bundled-data recipe (configs/bundled/<method>.yaml: its flags, as `bash main.sh
    bundled METHOD` runs it); pretrain() replaces its schedule with this test's budget."""
    return ["--config", os.path.join(ROOT, "configs", "bundled", f"{method}.yaml")]


METHODS = sorted(os.path.basename(p)[:-5] for p in
                 glob.glob(os.path.join(ROOT, "configs", "bundled", "*.yaml")))
STEPS = 150
# kNN points over random init each method must beat: about half the smaller of the two gaps measured
# at this budget under CI's 2 threads, fp32 on a CPU without bf16 units and bf16 on one with them
# (docs/results.md); mocov2_dsf is not asserted (its gap is negative at this budget) and runs with
# E2E_ALL=1, printing its gap
MEASURED = {"simclr": 0.9, "beclr": 2.0, "dsf": 2.0, "mocov2": 1.5, "mocov3": 1.0, "nnclr": 1.5,
            "snclr": 0.7, "mvmr": 3.0, "patchmix": 1.5}
# PatchMix's mixed terms slow its first steps, BeCLR's sub-networks too (in fp32): 150 steps end
# near random init (docs/results.md)
LONGER = {"patchmix": 300, "beclr": 400}


def pretrain(out: str, method: str, steps: int, *extra: str) -> None:
    """One epoch of `steps` steps over the whole training set, no monitor (the budget the margins
    were measured at)."""
    run("main_pretrain.py", *bundled(method), *TINY, "-b", "128", "--epochs", "1", "--train-subset",
        "0", "--steps-per-epoch", str(steps), "--warmup-epochs", "0.05", "--knn-freq", "0",
        "--seed", "0", "--amp", "bf16-native", "--print-freq", "100", "--results_dir", out, *extra)


@pytest.mark.parametrize("method", METHODS)
def test_pretraining_beats_random_init(method, tmp_path, random_init_knn):
    if method not in MEASURED and not os.environ.get("E2E_ALL"):
        pytest.skip(f"{method}: no margin measured at this budget yet (E2E_ALL=1 runs it)")
    margin = MEASURED.get(method, 0.0)
    out = str(tmp_path)
    pretrain(out, method, LONGER.get(method, STEPS))
    ckpt = os.path.join(out, "checkpoint_0001_000000.pth.tar")
    run("main_knn.py", "--pretrained", ckpt, *SUBSETS, *KNN, "--dataset", "fashion_mnist", "--data",
        FMNIST, "--results_dir", out)
    ours = results(out)["knn"]["top1"]["200"]
    print(f"{method}: kNN top-1 {ours:.2f} vs random init {random_init_knn:.2f}")
    assert ours > random_init_knn + margin, (method, ours, random_init_knn)


def test_knn_lincls_resume_and_results(tmp_path):
    """The whole path with every output checked: checkpoint, resume, kNN, linear, results.json."""
    out = str(tmp_path)
    pretrain(out, "simclr", 20, "--epochs", "2", "--train-subset", "2560")
    first = results(out)["pretrain"]
    assert os.path.isfile(os.path.join(out, "checkpoint_0002_000000.pth.tar"))
    stdout = run("main_pretrain.py", *bundled("simclr"), *TINY, "-b", "128", "--knn-freq", "0",
                 "--epochs", "3", "--steps-per-epoch", "20", "--train-subset", "2560",
                 "--resume", "auto", "--results_dir", out)
    assert "resumed from" in stdout and "checkpoint_0002_000000" in stdout
    assert "epoch 3/3" in stdout and "epoch 1/3" not in stdout
    finished = results(out)["pretrain"]
    again = run("main_pretrain.py", *bundled("simclr"), *TINY, "-b", "128", "--knn-freq", "0",
                "--epochs", "3", "--steps-per-epoch", "20", "--train-subset", "2560",
                "--resume", "auto", "--results_dir", out)
    assert "nothing to do" in again and results(out)["pretrain"] == finished  # not clobbered
    ckpt = os.path.join(out, "checkpoint_0003_000000.pth.tar")
    run("main_lincls.py", "--pretrained", ckpt, *SUBSETS, "--dataset", "fashion_mnist", "--data",
        FMNIST, "--epochs", "3", "--lr", "1", "--cache-features", "true", "--results_dir", out)
    record = results(out)
    for key in ("method", "dataset", "arch", "seed", "git_commit", "torch", "device"):
        assert record[key] is not None, key
    assert record["method"] == "simclr" and record["dataset"] == "fashion_mnist"
    assert first["images_per_s"] > 0 and first["command"].count("main_pretrain.py") == 1
    assert 10.0 < record["linear"]["top1"] <= 100.0 and record["linear"]["top5"] >= record[
        "linear"]["top1"]
    with open(os.path.join(out, "log.txt")) as f:
        epochs = [json.loads(line)["epoch"] for line in f if '"train_loss"' in line]
    assert epochs == [1, 2, 3]
