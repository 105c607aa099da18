"""Distributed launch on CPU: moco-v3-style spawn and torchrun both train, with gloo.

Loss-level equality of 2 processes and 1 process is proven per loss (tests/test_loss_*.py); here the
whole script runs under DDP: ranks agree on the data shards, gradients are averaged, rank 0 saves.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
RUN = ["--method", "mocov3", "-a", "resnet18", "--width", "8", "--dataset", "fashion_mnist",
       "--data", FMNIST, "--train-subset", "512", "-b", "64", "--epochs", "1",
       "--steps-per-epoch", "3", "--moco-dim", "32", "--moco-mlp-dim", "64", "--optimizer", "adamw",
       "--lr", "1e-3", "--warmup-epochs", "0", "--seed", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(autouse=True)
def need_data():
    if not os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing: bash main.sh test fetches it")
        pytest.skip("Fashion-MNIST not fetched")


def check_run(out: str) -> None:
    with open(os.path.join(out, "args.json")) as f:
        args = json.load(f)
    assert args["world_size"] == 2 and args["batch_size_per_gpu"] == 32
    ckpt = torch.load(os.path.join(out, "checkpoint_0001_000000.pth.tar"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_spawn_two_cpu_processes(tmp_path):
    out = str(tmp_path)
    proc = run([sys.executable, "main_pretrain.py", *RUN, "--multiprocessing-distributed",
                "--nproc-cpu", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                "--results_dir", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(out)


def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this python")
    out = str(tmp_path)
    proc = run([torchrun, "--standalone", "--nproc-per-node", "2", "main_pretrain.py", *RUN,
                "--results_dir", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(out)


def test_indivisible_batch_is_one_line_error(tmp_path):
    proc = run([sys.executable, "main_pretrain.py", *RUN, "-b", "63", "--multiprocessing-distributed",
                "--nproc-cpu", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                "--results_dir", str(tmp_path)])
    assert proc.returncode == 2  # rejected at parse time, before any process starts
    assert "not divisible by the 2 processes" in proc.stdout + proc.stderr
