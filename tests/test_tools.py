"""tools/ (results table, plots, retrieval grid), paper_results.yaml and configs/*.yaml."""

import argparse
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image

from data.datasets import DATASETS
from data.fashion_mnist import FILES as FMNIST_FILES
from tools import plots, results_table
from utils.args import parse_with_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
METHODS = {"mocov3", "simclr", "nnclr", "snclr", "dsf", "mocov2", "mocov2_dsf", "beclr", "mvmr",
           "patchmix", "mvmr_clip"}  # the registry's names, including those still being written
ARCHS = {"resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base"}
# launch and site flags: a config holds the recipe, the command line says where it runs
SITE = {"data", "results_dir", "dist_url", "multiprocessing_distributed", "world_size", "rank",
        "config"}


# ============ results table ============


def write_run(root, name, seed, knn=None, linear=None, random_linear=None, method="simclr",
              dataset="cifar10", arch="resnet18", epochs=1000, args_json=False, batch_size=256,
              linear_best=None, online=None):
    """A run directory as main_pretrain / main_knn / main_lincls leave it."""
    path = os.path.join(root, name)
    os.makedirs(path)
    record = {"method": method, "dataset": dataset, "arch": arch, "seed": seed,
              "pretrain": {"epochs": epochs, "batch_size": batch_size,
                           "online_probe_top1": online}}
    if knn is not None:
        record["knn"] = {"top1": {"10": knn - 1.0, "20": knn}, "epochs": None}
    if linear is not None:
        record["linear"] = {"top1": linear, "top5": linear + 5.0, "epochs": 100}
        if linear_best is not None:
            record["linear"].update(top1_best=linear_best, top5_best=linear_best + 5.0)
    if random_linear is not None:
        record["linear_random_init"] = {"top1": random_linear, "top5": random_linear + 5.0}
    if args_json:  # identity only in args.json (results.json's method overwritten by None)
        with open(os.path.join(path, "args.json"), "w") as f:
            json.dump({"method": method, "dataset": dataset, "arch": arch, "epochs": epochs,
                       "seed": seed, "batch_size": batch_size}, f)
        record["method"], record["pretrain"] = None, {}
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump(record, f)


PAPER = [
    {"method": "simclr", "dataset": "cifar10", "arch": "resnet18", "epochs": 1000,
     "protocol": "linear", "metric": "top1", "value": 90.74,
     "source": "vturrisi/solo-learn@9187ea39c2c3f43c455ab06664d2b019a9802954 README.md"},
    {"method": "simclr", "dataset": "cifar10", "arch": "resnet18", "epochs": 1000,
     "protocol": "knn", "metric": "top1", "value": 85.0, "source": "memory", "verified": False},
    {"method": "simclr", "dataset": "cifar10", "arch": "resnet18", "epochs": 500,
     "protocol": "linear", "metric": "top1", "value": 88.0, "source": "other"},
]


@pytest.fixture
def runs(tmp_path):
    """Three seeds of one config (nested dirs, one known only from args.json) + one unmatched."""
    root = tmp_path / "runs"
    write_run(root, "simclr/s0", 0, knn=80.0, linear=90.0, random_linear=20.0)
    write_run(root, "simclr/s1", 1, knn=82.0, linear=91.0)
    write_run(root, "simclr/s2", 2, knn=84.0, linear=92.0, args_json=True)
    write_run(root, "mvmr_fmnist", 0, knn=70.0, method="mvmr", dataset="fashion_mnist", epochs=5)
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump({"rows": PAPER}))
    return str(root), str(paper)


def _row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_table_groups_seeds_matches_paper_and_writes_json(runs, tmp_path):
    root, paper = runs
    out = tmp_path / "table.json"
    text = results_table.main([root, "--paper", paper, "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3  # simclr knn, simclr linear (not the 500-epoch paper row), mvmr knn
    lin = _row(rows, method="simclr", protocol="linear")
    assert lin["n"] == 3 and sorted(lin["seeds"]) == [0, 1, 2] and lin["epochs"] == 1000
    assert lin["mean"] == pytest.approx(91.0) and lin["std"] == pytest.approx(1.0)  # sample std
    assert lin["paper"] == 90.74 and lin["diff"] == pytest.approx(0.26)
    assert lin["random_init"] == pytest.approx(20.0)
    knn = _row(rows, method="simclr", protocol="knn")
    assert knn["mean"] == pytest.approx(82.0) and knn["std"] == pytest.approx(2.0)
    assert knn["diff"] == pytest.approx(-3.0) and knn["verified"] is False
    lone = _row(rows, method="mvmr")
    assert lone["paper"] is None and lone["diff"] is None and lone["n"] == 1 and lone["std"] == 0
    assert "91.00 ± 1.00 (n=3)" in text and "+0.26" in text and "-3.00" in text
    assert "85.00*" in text and "not verified" in text
    assert re.search(r"\| mvmr \|.*\| 70.00 \(n=1\) \|.*\| no published number \|", text)
    assert "solo-learn@9187ea3 README.md |" in text  # the commit shortened on screen only
    assert lin["source"].endswith("9187ea39c2c3f43c455ab06664d2b019a9802954 README.md")


def test_table_metric_filter_top5_ignore_epochs_and_knn_k(runs, capsys):
    root, paper = runs
    text = results_table.main([root, "--paper", paper, "--metric", "linear", "--top5"])
    assert "| knn |" not in text and "| top5 |" in text and "96.00 ± 1.00" in text
    text = results_table.main([os.path.join(root, "simclr", "s*"), "--paper", paper,
                               "--metric", "linear", "--ignore-epochs"])
    assert "90.74" in text and "88.00 (500 ep)" in text and "mvmr" not in text
    text = results_table.main([root, "--paper", paper, "--metric", "knn", "--knn-k", "10"])
    assert "81.00 ± 2.00 (n=3)" in text
    results_table.main([root, "--paper", paper, "--metric", "knn", "--knn-k", "200"])
    assert "has no k=200" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no run directory"):
        results_table.main([os.path.join(root, "missing"), "--paper", paper])


def test_table_matches_batch_size_best_epoch_and_online_rows(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "vits_b1024", 0, linear=70.0, linear_best=70.5, method="mocov3",
              dataset="imagenet", arch="vit_small", epochs=300, batch_size=1024)
    write_run(root, "vits_b4096", 0, linear=72.0, linear_best=72.6, method="mocov3",
              dataset="imagenet", arch="vit_small", epochs=300, batch_size=4096)
    write_run(root, "solo", 0, linear=89.0, linear_best=90.0, online=88.0)  # simclr cifar10
    row = {"method": "mocov3", "dataset": "imagenet", "arch": "vit_small", "epochs": 300,
           "protocol": "linear", "metric": "top1", "source": "s"}
    paper = [{**row, "value": 73.2, "batch_size": 4096, "report": "best"},
             {**row, "method": "simclr", "dataset": "cifar10", "arch": "resnet18", "epochs": 1000,
              "protocol": "linear-online", "value": 90.74, "batch_size": 256}]
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({"rows": paper}))
    out = tmp_path / "table.json"
    text = results_table.main([str(root), "--paper", str(path), "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    big = _row(rows, method="mocov3", batch_size=4096)
    assert big["report"] == "best" and big["mean"] == 72.6  # the paper reported its best epoch
    assert big["diff"] == pytest.approx(-0.6) and "72.60 (n=1, best)" in text
    small = _row(rows, method="mocov3", batch_size=1024)
    assert small["paper"] is None and small["mean"] == 70.0  # b1024 is not the b4096 number
    offline = _row(rows, method="simclr", protocol="linear")
    assert offline["paper_protocol"] == "linear-online" and "90.74 (online)" in text
    online = _row(rows, method="simclr", protocol="linear-online")
    assert online["mean"] == 88.0 and online["paper"] == 90.74
    text = results_table.main([str(root), "--paper", str(path), "--ignore-batch-size"])
    assert "73.20 (b4096)" in text  # shown beside the b1024 run, with its batch
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{**paper[0], "report": "mean"}]}))
    with pytest.raises(ValueError, match="report best or last"):
        results_table.load_paper(str(bad))


def test_table_reads_finetune_semi_supervised_and_voc07_records(tmp_path):
    """main_finetune.py writes into a subdirectory of the pretraining run; its label fraction
    picks the protocol. main_voc07.py writes a voc07 record beside the pretraining's."""
    root = tmp_path / "runs"
    write_run(root, "mvmr", 0, method="mvmr", dataset="imagenet", arch="resnet50", epochs=1000)
    with open(root / "mvmr" / "results.json") as f:
        record = json.load(f)
    record["voc07"] = {"mAP": 80.0, "mAP_11point": 78.0, "AP_pooled": 86.0}
    with open(root / "mvmr" / "results.json", "w") as f:
        json.dump(record, f)
    for name, fraction, top1 in (("semi1", 0.01, 50.0), ("semi10", 0.1, 65.0)):
        os.makedirs(root / "mvmr" / name)
        with open(root / "mvmr" / name / "results.json", "w") as f:
            json.dump({"method": "mvmr", "dataset": "imagenet", "arch": "resnet50", "seed": 0,
                       "finetune": {"top1": top1, "top5": top1 + 20, "top1_best": top1 + 1,
                                    "label_fraction": fraction}}, f)
    row = {"method": "mvmr", "dataset": "imagenet", "arch": "resnet50", "epochs": None,
           "source": "s"}
    paper = [{**row, "protocol": "semi-1%", "metric": "top1", "value": 56.1},
             {**row, "protocol": "semi-10%", "metric": "top5", "value": 89.5},
             {**row, "protocol": "voc07", "metric": "AP_pooled", "value": 87.1}]
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({"rows": paper}))
    out = tmp_path / "table.json"
    results_table.main([str(root), "--paper", str(path), "--metric", "all", "--top5",
                        "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert _row(rows, protocol="semi-1%", metric="top1")["mean"] == 50.0
    semi10 = _row(rows, protocol="semi-10%", metric="top5")
    assert semi10["mean"] == 85.0 and semi10["paper"] == 89.5 and semi10["epochs"] == 1000
    voc = _row(rows, protocol="voc07", metric="AP_pooled")
    assert voc["mean"] == 86.0 and voc["diff"] == pytest.approx(-1.1)
    assert _row(rows, protocol="voc07", metric="mAP")["paper"] is None


def test_mean_std_closed_form():
    assert results_table.mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert results_table.mean_std([7.0]) == (7.0, 0.0)


def test_paper_results_yaml():
    rows = results_table.load_paper(results_table.DEFAULT_PAPER)
    for r in rows:
        assert r["method"] in METHODS and r["dataset"] in DATASETS and r["arch"] in ARCHS, r
        metrics = results_table.VOC07_METRICS if r["protocol"] == "voc07" else {"top1", "top5"}
        assert r["protocol"] in results_table.PROTOCOLS and r["metric"] in metrics, r
        if r["protocol"].startswith("linear"):  # every linear number says which epoch it is
            assert r["report"] in {"best", "last"}, r
        assert r.get("batch_size") is None or isinstance(r["batch_size"], int), r
        assert isinstance(r["value"], float) and 0 < r["value"] <= 100, r
        assert r["epochs"] is None or isinstance(r["epochs"], int), r
        assert isinstance(r.get("verified", True), bool) and r["source"], r
    keys = [tuple(r[k] for k in results_table.PAPER_FIELDS) for r in rows]
    assert len(keys) == len(set(keys))
    assert not {r["method"] for r in rows} & {"dsf", "beclr", "snclr"}  # no readable tables
    simclr_in1k = [r for r in rows if r["method"] == "simclr" and r["dataset"] == "imagenet"]
    assert simclr_in1k and all(r["verified"] is False for r in simclr_in1k)  # from memory
    vits_linear = results_table.match_paper(
        {"method": "patchmix", "dataset": "imagenet", "arch": "vit_small", "epochs": 300,
         "protocol": "linear", "metric": "top1", "batch_size": 1024}, rows)
    assert sorted(r["value"] for r in vits_linear) == [77.4, 77.9]  # README and paper, both kept
    mocov3 = {"method": "mocov3", "dataset": "imagenet", "protocol": "linear", "metric": "top1",
              "arch": "vit_small", "epochs": 300}
    assert results_table.match_paper({**mocov3, "batch_size": 4096}, rows)[0]["value"] == 73.2
    assert not results_table.match_paper({**mocov3, "batch_size": 1024}, rows)  # a b4096 number


# ============ plots ============


def write_log(path, epochs, knn_every=0, truncated=False):
    os.makedirs(path)
    with open(os.path.join(path, "log.txt"), "w") as f:
        for e in range(1, epochs + 1):
            record = {"epoch": e, "train_loss": 5.0 / e, "train_lr": 0.1 * (1 - e / epochs),
                      "train_acc": e / epochs}
            if knn_every and e % knn_every == 0:
                record["test_knn_top1"] = 10.0 + e
            f.write(json.dumps(record) + "\n")
        if truncated:
            f.write('{"epoch": 99, "train_lo')  # a run still writing its last line


def test_plots_write_pngs_of_the_fixed_size(tmp_path):
    write_log(tmp_path / "a", 6, knn_every=2)
    write_log(tmp_path / "b", 4, truncated=True)
    assert plots.read_log(tmp_path / "b" / "log.txt")[-1]["epoch"] == 4
    assert plots.series(plots.read_log(tmp_path / "a" / "log.txt"), "test_knn_top1") == (
        [2, 4, 6], [12.0, 14.0, 16.0])
    out = tmp_path / "png"
    written = plots.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert sorted(os.path.basename(p) for p in written) == ["a.png", "b.png", "overlay.png"]
    assert plots.image_size() == (1200, 350)
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == plots.image_size()


def test_plot_run_names_stay_unique():
    assert plots.run_names(["x/run", "y/run/"]) == ["x_run", "y_run"]
    assert plots.run_names(["runs/a b", "runs/c"]) == ["a_b", "c"]
    assert plots.run_names(["o/bundled/dsf/seed0", "o/bundled/simclr/seed0", "o/bundled/dsf/seed1"]
                           ) == ["dsf_seed0", "simclr_seed0", "dsf_seed1"]


# ============ retrieval grid (on a real tiny checkpoint) ============


def _have_fmnist() -> bool:
    names = [n for pair in FMNIST_FILES.values() for n in pair]
    return all(any(os.path.isfile(os.path.join(FMNIST, n + ext)) for ext in ("", ".gz"))
               for n in names)  # gzip or raw IDX, as data/fashion_mnist.py reads


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """main_pretrain.py, SimCLR at width 8, 3 steps of 32 Fashion-MNIST images, kNN monitor on."""
    if not _have_fmnist():
        if os.environ.get("CI"):
            pytest.fail(f"Fashion-MNIST IDX files missing in {FMNIST} (bash main.sh test fetches)")
        pytest.skip(f"Fashion-MNIST IDX files missing in {FMNIST}: bash main.sh test fetches them")
    out = str(tmp_path_factory.mktemp("tiny_run"))
    cmd = [sys.executable, "main_pretrain.py", "--method", "simclr", "-a", "resnet18", "--width",
           "8", "--dataset", "fashion_mnist", "--data", "datasets/fashion-mnist", "--epochs", "1",
           "--steps-per-epoch", "3", "-b", "32", "--train-subset", "256", "--val-subset", "64",
           "--knn-freq", "1", "--results_dir", out]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_retrieval_grid_on_a_tiny_checkpoint(tiny_run, tmp_path):
    from tools import retrieval_grid

    (ckpt,) = glob.glob(os.path.join(tiny_run, "checkpoint_*.pth.tar"))
    out = str(tmp_path / "grid.png")
    result = retrieval_grid.main(["--pretrained", ckpt, "--dataset", "fashion_mnist", "--data",
                                  FMNIST, "--train-subset", "128", "--queries", "3",
                                  "--neighbours", "4", "--out", out, "--seed", "1"])
    assert len(result["queries"]) == 3 and len(set(result["queries"])) == 3
    assert [len(row) for row in result["neighbours"]] == [4, 4, 4]
    assert all(0 <= j < 128 for row in result["neighbours"] for j in row)
    assert 0.0 <= result["precision"] <= 100.0
    with Image.open(out) as im:
        assert im.size == retrieval_grid.image_size(3, 4) == (600, 400)


def test_retrieval_pieces():
    from tools import retrieval_grid

    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    sim, idx = retrieval_grid.nearest(torch.tensor([[2.0, 0.1]]), bank, 3)
    assert idx.tolist() == [[0, 2, 1]] and sim[0, 0] == pytest.approx(2 / math.hypot(2, 0.1))
    img = retrieval_grid.denormalise(torch.zeros(3, 28, 28), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert img.shape == (28, 28, 3) and img.max() == pytest.approx(0.5)
    framed = retrieval_grid.with_border(img, (0.0, 1.0, 0.0))
    assert framed.shape == (32, 32, 3) and framed[0, 0].tolist() == [0.0, 1.0, 0.0]
    assert framed[16, 16].tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_tools_read_a_real_run(tiny_run, tmp_path):
    """The readers agree with what main_pretrain.py writes (log.txt, results.json, args.json)."""
    (png,) = plots.main([tiny_run, "--out", str(tmp_path)])
    with Image.open(png) as im:
        assert im.size == plots.image_size()
    records = plots.read_log(os.path.join(tiny_run, "log.txt"))
    assert plots.series(records, "test_knn_top1")[0] == [1]  # --knn-freq 1
    run = results_table.load_run(os.path.join(tiny_run, "results.json"))
    assert (run["method"], run["dataset"], run["arch"], run["epochs"]) == (
        "simclr", "fashion_mnist", "resnet18", 1)


# ============ main.sh recipes launch configs/*.yaml ============


def main_sh_pretrain_lines() -> dict[str, list[str]]:
    """{function: main_pretrain.py arguments} for every main.sh function that pretrains."""
    with open(os.path.join(ROOT, "main.sh")) as f:
        text = f.read().replace("\\\n", " ")
    lines = {}
    for name, body in re.findall(r"^([a-z0-9_]+)\(\) \{(.*?)^\}", text, flags=re.M | re.S):
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            ends = [i for i, w in enumerate(words) if w.endswith("main_pretrain.py")]
            if ends:
                lines[name] = words[ends[0] + 1:]
    return lines


RECIPES = main_sh_pretrain_lines()
RECIPES.pop("bundled")  # runs configs/bundled/METHOD.yaml for any method: tested below


def pretrain_args(argv: list[str]) -> argparse.Namespace:
    import main_pretrain

    parser = argparse.ArgumentParser(parents=[main_pretrain.get_args_parser()])
    return parse_with_config(parser, argv)  # a fresh parser: parse_with_config sets its defaults


def test_every_config_has_a_recipe_and_back():
    configs = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert RECIPES and configs == set(RECIPES), "configs/<recipe>.yaml per main.sh pretraining line"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_main_sh_launches_its_config(recipe):
    """A recipe is written once: main.sh passes --config configs/<recipe>.yaml plus site flags."""
    path = os.path.join(ROOT, "configs", f"{recipe}.yaml")
    with open(path) as f:
        raw = yaml.safe_load(f)
    assert not set(raw) & SITE, f"{path}: site flags belong on the command line"
    words = RECIPES[recipe]
    assert words[:2] == ["--config", f"configs/{recipe}.yaml"], f"main.sh {recipe}(): {words[:2]}"
    import main_pretrain

    actions = main_pretrain.get_args_parser()._option_string_actions
    given = {actions[w].dest for w in words[2:] if w in actions}
    assert given <= SITE, f"main.sh {recipe}() sets {sorted(given - SITE)}: put them in {path}"
    parsed = vars(pretrain_args(words[:2]))
    for key, value in raw.items():  # YAML 1.1 reads 1e-6 as a string: write 1.0e-6
        assert not isinstance(value, str) or isinstance(parsed[key], str), (key, value)


def test_config_with_an_unknown_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: simclr\nbatchsize: 256\n")
    with pytest.raises(SystemExit):
        pretrain_args(["--config", str(bad)])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "bundled", "*.yaml"))))
def test_bundled_configs_parse_and_name_their_method(path):
    """`bash main.sh bundled METHOD` runs configs/bundled/METHOD.yaml (tests/test_end_to_end.py
    pretrains with it): a key that no flag has, or a method other than the file name, is an error."""
    with open(path) as f:
        raw = yaml.safe_load(f)
    assert not set(raw) & SITE, f"{path}: site flags belong on the command line"
    args = pretrain_args(["--config", path])
    assert args.method == os.path.basename(path)[:-5] and args.dataset == "fashion_mnist"
    assert args.epochs * (args.train_subset // args.batch_size) == 150  # the budget README quotes


def test_every_method_has_a_bundled_recipe():
    from models.methods import METHODS

    bundled = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "bundled",
                                                                          "*.yaml"))}
    assert bundled == set(METHODS)
