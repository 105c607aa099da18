"""ImageNet class subsets: the shipped lists, generate_IN100.py for any of them, and the in50 /
in100 / in200 / --class-list checks on a generated tree."""

import os

import pytest
from PIL import Image

import generate_IN100
from data.datasets import CLASS_LISTS, DatasetError, build_dataset, read_class_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = {name: os.path.join(ROOT, f) for name, f in
        {**CLASS_LISTS, "in100_mvmr": "IN100_mvmr.txt"}.items()}


def wnids(name):
    return generate_IN100.read_classes(LIST[name])


@pytest.mark.parametrize("name,count", [("in50", 50), ("in100", 100), ("in200", 200),
                                        ("in100_mvmr", 100)])
def test_shipped_lists_hold_unique_wnids(name, count):
    classes = wnids(name)
    assert len(classes) == len(set(classes)) == count
    assert generate_IN100.read_classes(name) == classes  # --classes NAME is the shipped file


def test_mvmr_lists_are_nested_sorted_and_not_cmc_in100():
    in50, in100, in200 = wnids("in50"), wnids("in100_mvmr"), wnids("in200")
    assert set(in50) < set(in100) < set(in200)
    assert in50 == sorted(in50) and in100 == sorted(in100) and in200 == sorted(in200)
    assert len(set(in100) - set(wnids("in100"))) == 88  # MV-MR's 100 classes are not CMC's


def test_read_class_list_takes_mvmr_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("n01443537 goldfish, Carassius auratus\n\n# a comment\nn01514668 cock\n")
    assert read_class_list(str(path)) == ["n01443537", "n01514668"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A tiny ImageNet holding every class of IN200.txt plus one that no list has."""
    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        for wnid in wnids("in200") + ["n99999999"]:
            os.makedirs(root / split / wnid)
            Image.new("RGB", (4, 3), (10, 20, 30)).save(root / split / wnid / "a.png")
    return root


@pytest.mark.parametrize("name,count", [("in50", 50), ("in200", 200)])
def test_generated_subset_loads_with_its_list(imagenet, tmp_path, name, count, capsys):
    generate_IN100.main(["--src", str(imagenet), "--dst", str(tmp_path), "--classes", name])
    assert f"{count} classes ({count} linked" in capsys.readouterr().out
    for split in ("train", "val"):
        ds = build_dataset(name, str(tmp_path), split)
        assert ds.classes == wnids(name) and len(ds) == count  # labels in the list's order
    ds = build_dataset("folder", str(tmp_path), "train", class_list=LIST[name])
    assert len(ds.classes) == count


def test_a_missing_listed_class_is_named(imagenet, tmp_path):
    generate_IN100.main(["--src", str(imagenet), "--dst", str(tmp_path), "--classes", "in50"])
    gone = wnids("in50")[7]
    os.remove(tmp_path / "train" / gone)  # a symlink
    with pytest.raises(DatasetError) as e:
        build_dataset("in50", str(tmp_path), "train")
    message = str(e.value)
    assert "\n" not in message and f"missing 1: {gone}" in message
    assert "expected 50 class folders" in message and "generate_IN100.py" in message
    with pytest.raises(DatasetError, match="missing 150: "):
        build_dataset("folder", str(tmp_path), "val", class_list=LIST["in200"])


def test_generate_refuses_a_source_without_a_listed_class(imagenet, tmp_path):
    listed = tmp_path / "mine.txt"
    listed.write_text("n01443537\nn00000042\n")
    with pytest.raises(SystemExit, match="1 of 2 classes missing .*n00000042"):
        generate_IN100.main(["--src", str(imagenet), "--dst", str(tmp_path / "out"),
                             "--classes", str(listed)])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="no such file .*in50, in100, in200"):
        generate_IN100.main(["--src", str(imagenet), "--dst", str(tmp_path / "out"),
                             "--classes", "in75"])


def test_class_list_is_for_folder_trees(imagenet):
    with pytest.raises(DatasetError, match="checks a --dataset folder tree"):
        build_dataset("in100", str(imagenet), "train", class_list=LIST["in100_mvmr"])
    with pytest.raises(DatasetError, match="applies to folder datasets"):
        build_dataset("cifar10", str(imagenet), "train", class_list=LIST["in50"])


def test_class_list_flag_reaches_the_loaders(imagenet, tmp_path):
    import subprocess
    import sys

    generate_IN100.main(["--src", str(imagenet), "--dst", str(tmp_path), "--classes", "in50"])
    base = [sys.executable, os.path.join(ROOT, "main_knn.py"), "--random-init", "-a", "resnet18",
            "--width", "8", "--img-size", "16", "--dataset", "folder", "--data", str(tmp_path),
            "--workers", "0", "--nb-knn", "5", "--results_dir", str(tmp_path / "r")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run(base + ["--class-list", LIST["in50"]], capture_output=True, text=True,
                        env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-1500:]
    bad = subprocess.run(base + ["--class-list", LIST["in200"]], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode != 0
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("error: folder: expected 200 class folders") and "missing 150" in line
