"""main_voc07.py: VOC layout reading, mAP against a naive loop, and the script end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import main_voc07 as voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ============ naive references ============


def naive_ap(scores, labels, eleven_point=False):
    """Per threshold: predict positive when score >= t; precision and recall by counting."""
    scores, labels = scores.tolist(), labels.tolist()
    npos = sum(labels)
    if npos == 0:
        return float("nan")
    points = []  # (recall, precision) for each distinct threshold, high to low
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for s, y in zip(scores, labels) if s >= t and y == 1)
        fp = sum(1 for s, y in zip(scores, labels) if s >= t and y == 0)
        points.append((tp / npos, tp / (tp + fp)))
    if eleven_point:
        total = 0.0
        for i in range(11):
            ps = [p for r, p in points if r >= i / 10 - 1e-12]
            total += max(ps) if ps else 0.0
        return total / 11
    ap, prev_recall = 0.0, 0.0
    for r, p in points:
        ap += (r - prev_recall) * p
        prev_recall = r
    return ap


@pytest.mark.parametrize("eleven", [False, True])
def test_average_precision_matches_naive_loop(eleven):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = 5 + trial
        labels = (torch.rand(n, generator=g) < 0.4).float()
        labels[trial % n] = 1.0
        scores = torch.randn(n, generator=g)
        if trial % 3 == 0:
            scores = scores.round()  # ties
        assert voc.average_precision(scores, labels, eleven) == pytest.approx(
            naive_ap(scores, labels, eleven), abs=1e-12)


def test_average_precision_closed_forms():
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert voc.average_precision(torch.tensor([4.0, 3.0, 2.0, 1.0]), labels) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3)
    assert voc.average_precision(torch.tensor([4.0, 1.0, 3.0, 2.0]), labels) == 1.0
    assert voc.average_precision(torch.zeros(4), labels) == 0.5  # one threshold: all positive
    assert voc.average_precision(torch.zeros(4), torch.zeros(4)) != voc.average_precision(
        torch.zeros(4), torch.zeros(4))  # NaN: no positive


def test_voc_metrics_mean_over_classes_and_pooled():
    g = torch.Generator().manual_seed(1)
    targets = (torch.rand(30, 20, generator=g) < 0.3).float()
    targets[:, 7] = 0.0  # a class without a positive is left out of the mean
    logits = torch.randn(30, 20, generator=g) + 2 * targets
    m = voc.voc_metrics(logits, targets)
    per_class = [naive_ap(logits[:, c], targets[:, c]) for c in range(20) if c != 7]
    assert m["classes_scored"] == 19
    assert m["mAP"] == pytest.approx(100 * sum(per_class) / 19)
    eleven = [naive_ap(logits[:, c], targets[:, c], True) for c in range(20) if c != 7]
    assert m["mAP_11point"] == pytest.approx(100 * sum(eleven) / 19)
    assert m["AP_pooled"] == pytest.approx(100 * naive_ap(logits.flatten(), targets.flatten()))


# ============ a generated VOC tree ============

OBJECTS = [  # per image: (class, difficult)
    [("cat", 0)], [("dog", 0), ("person", 0)], [("cat", 1)], [("car", 0), ("cat", 0)],
    [("dog", 0)], [("person", 0), ("car", 1)], [("cat", 0)], [("car", 0)],
    [("dog", 0), ("cat", 0)], [("person", 0)], [("car", 0), ("dog", 1)], [("cat", 0)],
]
COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "car": (40, 40, 200),
          "person": (200, 200, 40)}


def write_voc_tree(root):
    voc_dir = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc_dir, sub), exist_ok=True)
    ids = [f"{i:06d}" for i in range(len(OBJECTS))]
    for image_id, objects in zip(ids, OBJECTS):
        color = [sum(COLORS[name][k] for name, _ in objects) // len(objects) for k in range(3)]
        Image.new("RGB", (20, 14), tuple(color)).save(
            os.path.join(voc_dir, "JPEGImages", f"{image_id}.jpg"))
        xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>"
                      for n, d in objects)
        with open(os.path.join(voc_dir, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation><filename>{image_id}.jpg</filename>{xml}</annotation>")
    for split, part in (("train", ids[:8]), ("val", ids[8:]), ("trainval", ids)):
        with open(os.path.join(voc_dir, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(part) + "\n")
    return voc_dir


def test_targets_skip_difficult_objects_and_layout_errors(tmp_path):
    voc_dir = write_voc_tree(str(tmp_path))
    assert voc.voc2007_dir(str(tmp_path)) == voc_dir
    assert voc.voc2007_dir(voc_dir) == voc_dir
    ds = voc.VOC07(voc_dir, "train", voc.voc_transforms(16)[1])
    cat, car, dog = (voc.VOC_CLASSES.index(c) for c in ("cat", "car", "dog"))
    assert ds.targets[0, cat] == 1 and ds.targets[2].sum() == 0  # only a difficult cat
    assert ds.targets[3, car] == 1 and ds.targets[3, cat] == 1 and ds.targets[3].sum() == 2
    image, row, again = ds[1]
    assert image.shape == (3, 16, 16) and row == again == 1
    with pytest.raises(SystemExit, match="VOCDetection layout"):
        voc.voc2007_dir(str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="no split file .*test.txt"):
        voc.VOC07(voc_dir, "test", None)
    os.remove(os.path.join(voc_dir, "JPEGImages", "000000.jpg"))
    with pytest.raises(SystemExit, match="images of .* missing"):
        voc.VOC07(voc_dir, "train", None)
    os.rename(os.path.join(voc_dir, "JPEGImages"), os.path.join(voc_dir, "images"))
    with pytest.raises(SystemExit, match="no JPEGImages"):
        voc.voc2007_dir(str(tmp_path))


def run_script(tmp_path, extra, name):
    out = tmp_path / name
    cmd = [sys.executable, os.path.join(ROOT, "main_voc07.py"), "--random-init", "-a", "resnet18",
           "--width", "8", "--img-size", "224", "--data", str(tmp_path), "--crop", "32",
           "--epochs", "4", "--eval-freq", "2", "--workers", "0", "--extract-batch-size", "4",
           "--lr", "0.05", "--results_dir", str(out)] + extra
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "results.json") as f:
        return json.load(f)["voc07"]


@pytest.mark.slow
def test_script_end_to_end_and_two_processes_equal_one(tmp_path):
    write_voc_tree(str(tmp_path))
    one = run_script(tmp_path, [], "one")
    assert one["classes_scored"] == 4 and 0 < one["mAP"] <= 100
    assert set(one["AP_per_class"]) == {"cat", "dog", "car", "person"}
    assert one["mAP_best"] >= one["mAP"] and len(one["history"]) == 2
    two = run_script(tmp_path, ["--multiprocessing-distributed", "--nproc-cpu", "2",
                                "--dist-url", "tcp://127.0.0.1:29533"], "two")
    for key in ("mAP", "mAP_11point", "AP_pooled"):
        assert two[key] == pytest.approx(one[key], abs=1e-3)


def test_script_wrong_layout_is_one_line_error(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "main_voc07.py"), "--random-init", "--data",
           str(tmp_path), "--results_dir", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: no VOC2007 under --data {tmp_path}: expected {tmp_path}/VOCdevkit/VOC2007/"
        "{JPEGImages,Annotations,ImageSets/Main} (torchvision VOCDetection layout)"]
