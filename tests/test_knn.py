"""utils.knn: the weighted kNN vote against a naive per-sample loop, chunking, and feature extraction;
main_knn.py on 2 processes equal to 1."""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from utils.knn import encoder_in_eval, extract_features, knn_classify


def naive_knn(train_f, train_y, test_f, test_y, k, temperature, num_classes):
    """Per test sample: cosine to every training feature, the k largest, exp(s / T) summed per class."""
    correct = 0
    for x, truth in zip(test_f.tolist(), test_y.tolist(), strict=True):
        sims = []
        for f, y in zip(train_f.tolist(), train_y.tolist(), strict=True):
            dot = sum(a * b for a, b in zip(x, f, strict=True))
            norms = math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in f))
            sims.append((dot / norms, y))
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for s, y in sims[:k]:
            scores[y] += math.exp(s / temperature)
        correct += int(max(range(num_classes), key=lambda c: scores[c]) == truth)
    return 100.0 * correct / len(test_y)


@pytest.fixture(scope="module")
def clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=g, dtype=torch.float64)
    train_y, test_y = torch.randint(0, 5, (120,), generator=g), torch.randint(0, 5, (40,), generator=g)
    train_f = centres[train_y] + 1.2 * torch.randn(120, 8, generator=g, dtype=torch.float64)
    test_f = centres[test_y] + 1.2 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    return train_f, train_y, test_f, test_y


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_vote_equals_the_naive_loop(clusters, temperature):
    ks = [1, 5, 20, 120]
    ours = knn_classify(*clusters, ks=ks, temperature=temperature, num_classes=5)
    for k in ks:
        assert ours[k] == naive_knn(*clusters, k, temperature, 5), k
    assert 20.0 < ours[20] < 100.0  # a test where the vote matters, not a trivial 0 or 100


def test_chunking_and_k_larger_than_the_bank(clusters):
    full = knn_classify(*clusters, ks=[10, 500], num_classes=5)
    assert set(full) == {10, 120}  # k is capped at the bank size
    for chunk in (1, 7, 1000):
        assert knn_classify(*clusters, ks=[10, 500], num_classes=5, chunk_size=chunk) == full


def test_custom_similarity_replaces_the_cosine(clusters):
    train_f, train_y, test_f, test_y = clusters
    # negative squared distance: ranks like the Euclidean nearest neighbours
    euclid = knn_classify(*clusters, ks=[1], num_classes=5,
                          similarity=lambda a, b: -torch.cdist(a, b) ** 2)
    nearest = torch.cdist(test_f, train_f).argmin(1)
    assert euclid[1] == 100.0 * (train_y[nearest] == test_y).double().mean().item()


def test_extract_features_places_rows_by_index_and_restores_the_mode():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    images, labels = torch.randn(10, 3), torch.arange(10) % 3
    order = torch.randperm(10)
    loader = [(images[order[i:i + 4]], labels[order[i:i + 4]], order[i:i + 4]) for i in (0, 4, 8)]
    feats, ys = extract_features(encoder_in_eval(net), loader, 10, torch.device("cpu"))
    assert net.training  # put back in train mode after each batch
    net.eval()
    torch.testing.assert_close(feats, net(images))
    assert torch.equal(ys, labels)


@pytest.mark.parametrize("budget", [None, 7, 240])
def test_fp16_bank_in_blocks_equals_the_same_bank_in_fp32(clusters, budget):
    """A fp16 bank is read in fp32 blocks (budget // D rows) merged top-k by top-k: the vote equals
    the whole-bank vote on the same (fp16-rounded) values; against the unrounded fp32 bank only a
    near-tie can flip a neighbour."""
    train_f, train_y, test_f, test_y = (t.float() if t.is_floating_point() else t for t in clusters)
    bank16 = train_f.half()
    ks = [1, 5, 20, 120]
    blocked = knn_classify(bank16, train_y, test_f, test_y, ks=ks, num_classes=5, budget=budget)
    assert blocked == knn_classify(bank16.float(), train_y, test_f, test_y, ks=ks, num_classes=5)
    fp32 = knn_classify(train_f, train_y, test_f, test_y, ks=ks, num_classes=5, budget=budget)
    for k in ks:
        assert abs(blocked[k] - fp32[k]) <= 100.0 / len(test_y), k  # at most one test sample


def test_similarity_is_fp32_under_autocast(clusters):
    train_f, train_y, test_f, test_y = (t.float() if t.is_floating_point() else t for t in clusters)
    plain = knn_classify(train_f, train_y, test_f, test_y, ks=[1, 20], num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the pretraining monitor's context
        assert knn_classify(train_f, train_y, test_f, test_y, ks=[1, 20], num_classes=5) == plain


def test_extract_features_stores_the_bank_in_the_requested_dtype():
    net = torch.nn.Linear(3, 4)
    images = torch.randn(6, 3)
    loader = [(images[:4], torch.zeros(4, dtype=torch.long), torch.arange(4)),
              (images[4:], torch.ones(2, dtype=torch.long), torch.arange(4, 6))]
    feats, _ = extract_features(net, loader, 6, torch.device("cpu"), dtype=torch.float16)
    assert feats.dtype == torch.float16
    torch.testing.assert_close(feats, net(images).detach().half())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")


def run_main_knn(out, *extra) -> dict:
    """main_knn.py on a random-init encoder, odd bank and query counts (the 2-process shards pad)."""
    argv = ["--random-init", "-a", "resnet18", "--width", "8", "--dataset", "fashion_mnist",
            "--data", FMNIST, "--train-subset", "301", "--val-subset", "101", "--nb-knn", "10", "20",
            "-b", "32", "--seed", "0", "-j", "0", "--results_dir", str(out), *extra]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main_knn.py"), *argv], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["knn_random_init"]


@pytest.mark.slow  # two interpreters
@pytest.mark.skipif(not os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")),
                    reason="Fashion-MNIST not fetched: bash main.sh test fetches it")
def test_main_knn_two_processes_equal_one(tmp_path):
    one = run_main_knn(tmp_path / "one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = run_main_knn(tmp_path / "two", "--multiprocessing-distributed", "--nproc-cpu", "2",
                       "--dist-url", f"tcp://127.0.0.1:{port}")
    assert one["top1"]["20"] > 10.0  # above chance, so equality is not trivially chance
    assert two["top1"] == one["top1"]
    assert one["train_images"] == two["train_images"] == 301
    assert one["val_images"] == two["val_images"] == 101
