"""Bad input ends in one line on stderr and a clear exit status, never in a traceback.

Each case runs an entry script's real ``__main__`` block in this process (runpy, so the imports are
paid once): usage errors exit 2 before any data or model is built; failures that come from the
user's files (a corrupt checkpoint, a malformed dataset) exit 1. An exception escaping the block
would be a traceback in a real process, and fails the test. Two cases also run as real processes.
"""

import argparse
import builtins
import os
import runpy
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
TINY = ["-a", "resnet18", "--width", "8", "-j", "0", "--data", FMNIST]
USAGE, RUNTIME = 2, 1


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny bad files: YAML configs, checkpoints, a class list, an empty dataset folder."""
    d = tmp_path_factory.mktemp("bad")
    text = {
        "malformed.yaml": "batch_size: 256\nlr: [0.1\n",
        "list.yaml": "- batch_size\n- 256\n",
        "unknown.yaml": "batch_sise: 256\n",
        "wrongtype.yaml": "batch_size: abc\n",
        "badwnids.txt": "n01440764\nnot_a_wnid\n",
    }
    for name, content in text.items():
        (d / name).write_text(content)
    good = d / "good.pth"
    torch.save({"model": {"backbone.w": torch.zeros(256)}, "args": {"arch": "resnet18"}}, good)
    (d / "truncated.pth").write_bytes(good.read_bytes()[:300])
    (d / "garbage.pth").write_bytes(os.urandom(2000))
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, d / "nobackbone.pth")
    torch.save({"args": argparse.Namespace(arch="resnet18")}, d / "pickled.pth")
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(3, 3)},
                "args": {"arch": "resnet18", "width": 8, "img_size": 28}}, d / "mismatch.pth")
    (d / "empty_dataset").mkdir()
    return {name: str(d / name) for name in [*text, "truncated.pth", "garbage.pth",
                                            "nobackbone.pth", "pickled.pth", "mismatch.pth",
                                            "empty_dataset"]}


P, K, L, G = "main_pretrain.py", "main_knn.py", "main_lincls.py", "generate_IN100.py"
F, V = "main_finetune.py", "main_voc07.py"
# (script, argv ({name} = a file of the fixture), exit status, words the one line must contain)
CASES = [
    (P, "-b 0", USAGE, "--batch-size"),
    (P, "-b 1", USAGE, "BatchNorm"),
    (P, "-b 7 --multiprocessing-distributed --nproc-cpu 2", USAGE, "not divisible by the 2"),
    (P, "-b 8 --accum-steps 3", USAGE, "accumulation"),
    (P, "--ns 0", USAGE, "--ns"),
    (P, "-a resnet999", USAGE, "resnet999"),
    (P, "--method nope", USAGE, "nope"),
    (P, "--dataset imagenet2", USAGE, "imagenet2"),
    (P, "--lr -1", USAGE, "--lr"),
    (P, "--lr abc", USAGE, "invalid float"),
    (P, "--moco-t -0.2", USAGE, "--moco-t"),
    (P, "--workers -1", USAGE, "--workers"),
    (P, "--epochs -1", USAGE, "--epochs"),
    (P, "--epochs 0", USAGE, "--epochs"),
    (P, "--moco-m 1.5", USAGE, "--moco-m"),
    (P, "--crop-min 0", USAGE, "--crop-min"),
    (P, "--print-freq 0", USAGE, "--print-freq"),
    (P, "--randaugment-p 2", USAGE, "--randaugment-p"),
    (P, "--amp fp8", USAGE, "--amp"),
    (P, "-a vit_small --img-size 100 --patch-size 16", USAGE, "--img-size"),
    (P, "-a vit_tiny --patch-size 16", USAGE, "28-px"),  # the dataset's own crop size
    (P, "-a vit_small --img-size 224 --local-crops 2 --local-crop-size 90", USAGE, "local"),
    (P, "-b 8 --train-subset 4", USAGE, "--train-subset"),
    (P, "--mix-num 0", USAGE, "--mix-num"),
    (P, "--resume /no/such/checkpoint.pth", USAGE, "--resume"),
    (P, "--data /no/such/folder", USAGE, "--data"),
    (P, "--config /no/such/config.yaml", USAGE, "no such file"),
    (P, "--config {malformed.yaml}", USAGE, "not valid YAML at line 3"),
    (P, "--config {list.yaml}", USAGE, "not a mapping"),
    (P, "--config {unknown.yaml}", USAGE, "batch_sise"),
    (P, "--config {wrongtype.yaml}", USAGE, "invalid int value: 'abc'"),
    (P, "-b 8 --train-subset 16 --resume {truncated.pth}", RUNTIME, "corrupt or truncated"),
    (P, "-b 8 --dataset folder --data {empty_dataset}", RUNTIME, "empty_dataset"),
    (K, "", USAGE, "--random-init"),
    (K, "--pretrained /no/such/checkpoint.pth", USAGE, "--pretrained"),
    (K, "--pretrained {truncated.pth} --random-init", USAGE, "exclude each other"),
    (K, "--random-init --nb-knn 0", USAGE, "--nb-knn 20 200"),
    (K, "--random-init --temperature 0", USAGE, "--temperature"),
    (K, "--random-init --features projector", USAGE, "--pretrained"),
    (K, "--random-init -a resnet999", USAGE, "resnet999"),
    (K, "--pretrained {truncated.pth}", RUNTIME, "corrupt or truncated"),
    (K, "--pretrained {garbage.pth}", RUNTIME, "corrupt or truncated"),
    (K, "--pretrained {nobackbone.pth}", RUNTIME, "no backbone weights"),
    (K, "--pretrained {pickled.pth}", RUNTIME, "argparse.Namespace"),
    (K, "--pretrained {mismatch.pth}", RUNTIME, "size mismatch for conv1.weight"),
    (L, "--random-init --epochs 0", USAGE, "--epochs"),
    (L, "--random-init --lr -1", USAGE, "--lr"),
    (L, "--random-init -b 0", USAGE, "--batch-size"),
    (L, "--random-init -b 33 --multiprocessing-distributed --nproc-cpu 2", USAGE, "not divisible by the 2"),
    (L, "--random-init --lr-lag -1", USAGE, "--lr-lag"),
    (P, "--lr-schedule mvmr-clip --lr-cycle-steps -5", USAGE, "--lr-cycle-steps"),
    (L, "--pretrained /no/such/checkpoint.pth", USAGE, "--pretrained"),
    (L, "--pretrained {garbage.pth}", RUNTIME, "corrupt or truncated"),
    (G, "--dst /tmp/in100", USAGE, "--src"),
    (G, "--src /no/such/imagenet --dst /tmp/in100", RUNTIME, "/no/such/imagenet"),
    (G, "--src / --dst /tmp/in100 --classes /no/such/list.txt", RUNTIME, "list.txt"),
    (G, "--src / --dst /tmp/in100 --classes {badwnids.txt}", RUNTIME, "not_a_wnid"),
    (F, "--random-init -b 0", USAGE, "--batch-size"),
    (F, "--pretrained /no/such/checkpoint.pth", USAGE, "--pretrained"),
    (F, "--random-init --lr -1", USAGE, "--lr"),
    (V, "--random-init --lr -1", USAGE, "--lr"),
    (V, "--pretrained /no/such/checkpoint.pth", USAGE, "--pretrained"),
]


def fill(words: list[str], files: dict) -> list[str]:
    """Replace {name} by the path of the fixture's file `name`."""
    for name, path in files.items():
        words = [w.replace("{" + name + "}", path) for w in words]
    return words


def run_main_block(script: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python SCRIPT ARGV` in this process: (exit status, stderr)."""
    path = os.path.join(ROOT, script)
    if not os.path.exists(path):
        pytest.skip(f"{script} is not in this checkout")
    monkeypatch.setattr(sys, "argv", [path, *argv])
    monkeypatch.setattr(builtins, "print", builtins.print)  # dist.init wraps print; undo it
    with pytest.raises(SystemExit) as info:
        runpy.run_path(path, run_name="__main__")
    err = capsys.readouterr().err
    code = info.value.code
    if isinstance(code, str):  # the interpreter prints a SystemExit message and exits 1
        err, code = err + code + "\n", 1
    return code, err


@pytest.mark.parametrize("script,argv,status,words", CASES,
                         ids=[f"{s[:-3]}:{a or 'no-args'}" for s, a, _, _ in CASES])
def test_bad_input_is_one_line(script, argv, status, words, files, tmp_path, monkeypatch, capsys,
                               one_thread):
    args = fill(argv.split(), files)
    if script != G:
        args += ["--results_dir", str(tmp_path)]
        args = TINY + args if script in (P, K, L) and "--data" not in argv else args
    code, err = run_main_block(script, args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]
    assert code == status, (code, lines[0])


def test_there_are_at_least_30_bad_inputs():
    assert len(CASES) >= 30


def test_debug_shows_the_traceback(files, tmp_path, monkeypatch, capsys, one_thread):
    argv = [*TINY, "--pretrained", files["truncated.pth"], "--results_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [K, *argv, "--debug"])
    monkeypatch.setattr(builtins, "print", builtins.print)
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        runpy.run_path(os.path.join(ROOT, K), run_name="__main__")


@pytest.mark.slow  # the in-process cases cover the same code; this proves the real exit path
@pytest.mark.parametrize("script,argv,status", [
    (P, ["--config", "{malformed.yaml}"], USAGE),
    (K, ["--pretrained", "{garbage.pth}", *TINY], RUNTIME),
])
def test_real_process_prints_one_line(script, argv, status, files, tmp_path):
    argv = fill(argv, files) + ["--results_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
