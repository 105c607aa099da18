"""Reliability, end to end in subprocesses on CPU: kill -9 and SIGTERM at random steps resume bit
for bit (1 process and 2 gloo processes), a torn checkpoint falls back to the previous one,
non-finite steps stop or are skipped, bad images fail with their path or are skipped, malicious or
mismatched checkpoints are refused, and a batch that does not split over the ranks is an error.

Every run is the tiny recipe below (about 7 s, mostly imports); `-s` prints each kill/resume trial.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.datasets import BadImageError, DatasetError, build_dataset
from utils.checkpoint import find_resume, list_checkpoints, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "datasets", "fashion-mnist")
ITERS, EPOCHS = 4, 3  # steps per epoch, epochs: 12 steps, a checkpoint after each
RECIPE = ["--train-subset", "512", "-b", "64", "-a", "resnet18", "--width", "8",
          "--steps-per-epoch", str(ITERS), "--epochs", str(EPOCHS), "--save-freq-steps", "1",
          "--keep-checkpoints", "3", "--optimizer", "adamw", "--lr", "1e-3", "--warmup-epochs",
          "0", "--method", "simclr", "--dataset", "fashion_mnist", "--data", FMNIST,
          "--seed", "0", "-j", "0", "--print-freq", "1"]  # fmt: skip
FINAL = f"checkpoint_{EPOCHS:04d}_000000.pth.tar"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 300  # seconds: a hung run fails the test instead of the CI job

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")),
    reason="bundled Fashion-MNIST missing (bash main.sh test fetches it)",
)


# ============ helpers ============


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_flags() -> list[str]:
    return ["--multiprocessing-distributed", "--nproc-cpu", "2",
            "--dist-url", f"tcp://127.0.0.1:{free_port()}"]  # fmt: skip


def start(out: str, *extra: str) -> subprocess.Popen:
    """main_pretrain.py in its own process group (so a kill reaches spawned ranks), logs in out."""
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "console.txt"), "a")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, os.path.join(ROOT, "main_pretrain.py"), *RECIPE, "--results_dir", out,
           *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    proc.log = log
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for a run (killing its whole group on timeout); return (status, console output)."""
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.log.close()
    with open(proc.log.name) as f:
        return proc.returncode, f.read()


def run(out: str, *extra: str, status: int | None = 0) -> str:
    code, console = finish(start(out, *extra))
    if status is not None:
        assert code == status, f"exit status {code} != {status}:\n{console[-4000:]}"
    return console


def steps_saved(out: str) -> int:
    """Global step of the newest checkpoint (checkpoint_EEEE_SSSSSS: E epochs + S steps done)."""
    found = list_checkpoints(out)
    if not found:
        return 0
    _, epoch, step = os.path.basename(found[0]).split(".")[0].split("_")
    return int(epoch) * ITERS + int(step)


def signal_at(proc: subprocess.Popen, out: str, after_step: int, delay: float, sig: int) -> None:
    """Send sig to the run's process group once `after_step` steps are saved, `delay` s later."""
    deadline = time.time() + TIMEOUT
    while steps_saved(out) < after_step:
        assert proc.poll() is None, f"run ended before step {after_step}"
        assert time.time() < deadline, "run too slow"
        time.sleep(0.005)
    time.sleep(delay)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, sig)  # every process: the launcher and the ranks it spawned
    else:
        os.kill(proc.pid, sig)  # as a scheduler does: the launcher forwards it to the ranks


def assert_same(a: object, b: object, where: str = "checkpoint") -> None:
    """Bit-identical: torch.equal on every tensor, == on everything else, recursively."""
    if torch.is_tensor(a):
        same = torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
        assert same, f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(out: str, reference: str) -> None:
    """The final checkpoints agree on everything but the args (results_dir, resume differ)."""
    ours = load_checkpoint(os.path.join(out, FINAL))
    ref = load_checkpoint(os.path.join(reference, FINAL))
    ours.pop("args"), ref.pop("args")
    assert_same(ours, ref)


def finite_state(ckpt: dict) -> bool:
    tensors = [*ckpt["model"].values(), *ckpt["criterion"].values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """The uninterrupted single-process run every resumed run must reproduce bit for bit."""
    out = str(tmp_path_factory.mktemp("reference"))
    run(out)
    return out


def kill_and_resume(out: str, seed: int, *extra: str, ddp: bool = False) -> str:
    """SIGKILL the run (whole process group) after a random step plus a random delay, then
    resume it with --resume auto to the end. Returns a description of the trial."""
    launch = (lambda: [*extra, *ddp_flags()]) if ddp else (lambda: list(extra))
    rng = random.Random(seed)
    # at least 4 steps left, and steps take 0.05-0.2 s: the kill lands anywhere, saves included
    after = min(steps_saved(out) + rng.randint(1, 2 * ITERS), EPOCHS * ITERS - 4)
    delay = rng.uniform(0.0, 0.1)
    proc = start(out, *launch())
    try:
        signal_at(proc, out, after, delay, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    code, _ = finish(proc)
    assert code == -signal.SIGKILL, f"the run was not killed (status {code})"
    killed_at = steps_saved(out)
    console = run(out, "--resume", "auto", *launch())
    assert "resumed from" in console
    return (
        f"killed {delay:.2f} s after step {after} saved (newest: step {killed_at} of "
        f"{EPOCHS * ITERS})"
    )


# ============ kill -9, SIGTERM, torn checkpoints ============


def test_sigkill_at_random_steps_resumes_bit_exactly(reference, tmp_path):
    """Three kill times (seeds 0-2); the trials run side by side, which moves only the kill time."""
    seeds = [0, 1, 2]
    with ThreadPoolExecutor(len(seeds)) as pool:
        trials = list(
            pool.map(lambda seed: kill_and_resume(str(tmp_path / str(seed)), seed), seeds)
        )
    for seed, trial in zip(seeds, trials, strict=True):
        assert_same_run(str(tmp_path / str(seed)), reference)
        print(f"kill/resume trial (1 process, seed {seed}): {trial}: bit-identical")


def test_two_process_gloo_run_survives_sigterm_and_sigkill(tmp_path):
    """SIGTERM to the launcher (as SLURM sends it) reaches both ranks, which save and exit 75; the
    requeued run is then killed -9 (whole process group) and resumed: bit-identical at the end."""
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    with ThreadPoolExecutor(1) as pool:  # the uninterrupted run, meanwhile
        reference_done = pool.submit(run, ref, *ddp_flags())
        proc = start(out, *ddp_flags())  # a new port per launch: old ones may be in TIME_WAIT
        signal_at(proc, out, 2, 0.05, signal.SIGTERM)
        code, console = finish(proc)
        assert code == 75, console[-3000:]
        assert console.count("preempted at epoch") == 2  # both ranks stopped after the same step
        trial = kill_and_resume(out, 3, "--resume", "auto", ddp=True)
        reference_done.result()
    assert_same_run(out, ref)
    print(
        f"kill/resume trial (2 gloo processes, seed 3): preempted, requeued, {trial}: bit-identical"
    )


def test_sigterm_saves_exits_75_and_resumes_bit_exactly(reference, tmp_path):
    out = str(tmp_path)
    proc = start(out)
    signal_at(proc, out, 2, 0.05, signal.SIGTERM)
    code, console = finish(proc)
    assert code == 75, console[-3000:]  # utils.preemption.PREEMPTED_EXIT_CODE
    assert "preempted at epoch" in console and "status 75" in console
    saved = steps_saved(out)
    line = next(s for s in console.splitlines() if s.startswith("preempted at epoch"))
    epoch, step = int(line.split()[3]), int(line.split()[5].rstrip(":"))
    assert saved == epoch * ITERS + step  # the checkpoint of the step the run stopped after
    run(out, "--resume", "auto")
    assert_same_run(out, reference)
    print(f"preemption trial (SIGTERM): stopped after step {saved}, resumed: bit-identical")


def test_truncated_newest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference, out)
    newest, previous = list_checkpoints(out)[:2]
    size = os.path.getsize(newest)
    with open(newest, "r+b") as f:
        f.truncate(size // 2)  # a write torn by a crash (or a full disk)
    with pytest.warns(UserWarning) as caught:
        path, _ = find_resume("auto", out)
    message = str(caught[0].message)
    assert path == previous and newest in message and previous in message
    console = run(out, "--resume", "auto")
    assert f"resumed from {previous}" in console and newest in console  # the warning
    assert_same_run(out, reference)  # the last step is redone exactly


# ============ non-finite steps ============


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path)
    # AdamW moves every weight by ~lr at the first step: the second forward overflows
    console = run(out, "--lr", "1e30", "--on-nonfinite", "stop", status=1)
    assert "error: non-finite loss at epoch 0 step 1" in console
    saved = list_checkpoints(out)
    assert [os.path.basename(p) for p in saved] == ["checkpoint_0000_000001.pth.tar"]
    assert finite_state(load_checkpoint(saved[0]))  # loads, and the bad step never reached it


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory) -> tuple[str, str]:
    out = str(tmp_path_factory.mktemp("skip"))
    return out, run(out, "--lr", "1e30", "--on-nonfinite", "skip")


def test_nonfinite_skip_skips_and_counts(skipped_run):
    out, console = skipped_run
    skipped = [s for s in console.splitlines() if "step skipped" in s]
    assert skipped[0].startswith("warning: non-finite loss at epoch 0 step 1")
    assert len(skipped) == EPOCHS * ITERS - 1  # every step after the first overflows
    assert load_checkpoint(os.path.join(out, FINAL))["nonfinite_skipped"] == len(skipped)


def test_nonfinite_skip_leaves_no_nonfinite_state_in_checkpoints(skipped_run):
    out, _ = skipped_run
    assert finite_state(load_checkpoint(os.path.join(out, FINAL)))


# ============ bad images and bad folder layouts ============


def write_image(path: str, seed: int, fmt: str = "JPEG", size: int = 20) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path, fmt)


def write_bad_images(folder: str) -> list[str]:
    """A truncated JPEG, a zero-byte file and text named .png; returns their paths."""
    write_image(os.path.join(folder, "full.jpg"), 99, size=64)
    truncated, empty, text = (os.path.join(folder, n) for n in ("b_trunc.jpg", "c_empty.jpg",
                                                                   "d_text.png"))  # fmt: skip
    with open(os.path.join(folder, "full.jpg"), "rb") as f:
        data = f.read()
    os.remove(os.path.join(folder, "full.jpg"))
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    open(empty, "wb").close()
    with open(text, "w") as f:
        f.write("not an image\n")
    return [truncated, empty, text]


@pytest.fixture()
def bad_tree(tmp_path) -> tuple[str, list[str]]:
    """train/cat: a.jpg, 3 bad files, e.jpg; train/dog: f.jpg, g.png (indices 0..7, bad 1-3)."""
    root = str(tmp_path / "tree")
    write_image(f"{root}/train/cat/a.jpg", 0)
    bad = write_bad_images(f"{root}/train/cat")
    write_image(f"{root}/train/cat/e.jpg", 1)
    write_image(f"{root}/train/dog/f.jpg", 2)
    write_image(f"{root}/train/dog/g.png", 3, "PNG")
    return root, bad


def test_bad_image_fails_with_its_path_and_the_fix(bad_tree):
    root, bad = bad_tree
    ds = build_dataset("folder", root, "train")  # on_bad_image="fail" is the default
    assert ds[0][0].shape == (3, 20, 20)
    for index, path in enumerate(bad, start=1):
        with pytest.raises(BadImageError) as info:
            ds[index]
        message = str(info.value)
        assert "\n" not in message and path in message and "--on-bad-image skip" in message
    # from a loader worker the error still reads as one line naming the file
    loader = DataLoader(ds, batch_size=8, num_workers=1)
    with pytest.raises(BadImageError) as info:
        next(iter(loader))
    assert "\n" not in str(info.value) and bad[0] in str(info.value)


def test_bad_image_skip_substitutes_the_next_readable_image(bad_tree):
    root, bad = bad_tree
    ds = build_dataset("folder", root, "train", on_bad_image="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 7 and all(image.shape == (3, 20, 20) for image, _ in items)
    assert all(torch.equal(items[i][0], items[4][0]) and items[i][1] == 0 for i in (1, 2, 3))
    assert sorted(ds.skipped) == sorted(bad)  # counted once each
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and all(any(p in m for m in messages) for p in bad)
    # deterministic: a fresh dataset (a resumed run, another worker) substitutes the same way
    again = build_dataset("folder", root, "train", on_bad_image="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert all(torch.equal(again[i][0], items[i][0]) for i in range(len(ds)))
    # the last image wraps around to the first readable one
    last = build_dataset("folder", root, "train", on_bad_image="skip")
    last.samples = last.samples[:4]  # a.jpg + the 3 bad files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(last[3][0], items[0][0])
    with pytest.raises(ValueError, match="on_bad_image"):
        build_dataset("folder", root, "train", on_bad_image="ignore")


def _one_line(error: type, *args: object) -> str:
    with pytest.raises(error) as info:
        build_dataset(*args)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_empty_class_folder_and_wrong_layouts_are_one_line_errors(tmp_path):
    root = str(tmp_path / "data")
    write_image(f"{root}/train/cat/a.jpg", 0)
    os.makedirs(f"{root}/train/dog")  # an empty class folder
    message = _one_line(DatasetError, "folder", root, "train")
    assert "empty class folder" in message and "dog" in message
    os.makedirs(f"{root}/train/dog/sub")
    with open(f"{root}/train/dog/notes.txt", "w") as f:
        f.write("no images")
    assert "dog" in _one_line(DatasetError, "folder", root, "train")  # still no image
    message = _one_line(FileNotFoundError, "folder", root, "val")  # no val/
    assert f"{root}/val is not a directory" in message and "{train,val}/<class>" in message
    # --data pointed at the split folder itself, or at nothing
    assert "looks like a split folder" in _one_line(FileNotFoundError, "folder",
                                                    f"{root}/train", "train")  # fmt: skip
    assert "does not exist" in _one_line(FileNotFoundError, "imagenet", f"{root}/nope", "train")
    # images straight in train/ (no class folders)
    flat = str(tmp_path / "flat")
    write_image(f"{flat}/train/a.jpg", 0)
    assert "no class folders" in _one_line(DatasetError, "folder", flat, "train")


def test_in100_needs_the_in100_class_list(tmp_path):
    with open(os.path.join(ROOT, "IN100.txt")) as f:
        wnids = f.read().split()
    root = str(tmp_path)
    for wnid in wnids[:99] + ["n99999999"]:  # one class swapped
        os.makedirs(f"{root}/train/{wnid}")
    message = _one_line(DatasetError, "in100", root, "train")
    assert wnids[99] in message and "n99999999" in message and "generate_IN100" in message


FOLDER = ["--dataset", "folder", "--img-size", "16", "--train-subset", "0", "-b", "8",
          "--steps-per-epoch", "0", "--epochs", "2", "--keep-checkpoints", "0", "-j", "1",
          "--on-bad-image", "skip"]  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[str, str, str, list[str]]:
    """Pretraining on a folder of 16 images and 3 bad files (2 steps of 8 per epoch, 1 worker)."""
    tmp = tmp_path_factory.mktemp("folder")
    root, out = str(tmp / "tree"), str(tmp / "out")
    for i in range(16):
        write_image(f"{root}/train/{'cat' if i < 8 else 'dog'}/{i:02d}.jpg", i, size=24)
    bad = write_bad_images(f"{root}/train/cat")
    return root, out, run(out, *FOLDER, "--data", root), bad


def test_folder_pretraining_with_on_bad_image_skip_finishes(folder_run):
    root, out, console, bad = folder_run
    assert "epoch 2/2" in console
    assert os.path.isfile(os.path.join(out, "checkpoint_0002_000000.pth.tar"))
    assert all(f"skipped unreadable image {path}" in console for path in bad)


def test_folder_resume_with_loader_workers_is_bit_exact(folder_run, tmp_path):
    """Resuming from a mid-epoch checkpoint (what a kill right after that save leaves) ends where
    the uninterrupted run ended, with augmentations drawn in a worker and bad images skipped."""
    root, reference_dir, _, _ = folder_run
    out = str(tmp_path)
    shutil.copy(os.path.join(reference_dir, "checkpoint_0000_000001.pth.tar"), out)
    run(out, *FOLDER, "--data", root, "--resume", "auto")
    final = "checkpoint_0002_000000.pth.tar"
    ours, ref = (load_checkpoint(os.path.join(d, final)) for d in (out, reference_dir))
    assert_same(ours["model"], ref["model"], "model")


# ============ malicious and mismatched checkpoints, bad batch sizes ============


class Payload:
    """Unpickling this would run code (here: create a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_with_a_pickled_callable_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    cases = {"callable.pth": {"model": os.system}, "payload.pth": {"model": Payload(marker)}}
    for name, state in cases.items():
        path = str(tmp_path / name)
        torch.save(state, path)
        with pytest.raises(RuntimeError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"cannot load checkpoint {path}") and "\n" not in message
    assert not os.path.exists(marker)  # the payload never ran


def test_resume_of_another_method_arch_and_ns_lists_the_mismatches(reference, tmp_path):
    ckpt = os.path.join(reference, FINAL)
    console = run(str(tmp_path), "--resume", ckpt, "--method", "mocov3", "-a", "resnet34",
                  "--ns", "2", status=1)  # fmt: skip
    line = next(s for s in console.splitlines() if s.startswith("error:"))
    for mismatch in ("method: checkpoint 'simclr' vs now 'mocov3'",
                     "arch: checkpoint 'resnet18' vs now 'resnet34'",
                     "ns: checkpoint 1 vs now 2"):  # fmt: skip
        assert mismatch in line


def test_batch_not_divisible_by_the_world_size_is_a_clear_error(tmp_path):
    console = run(str(tmp_path), "-b", "63", *ddp_flags(), status=2)  # a usage error, at parse
    assert "the global batch 63 is not divisible by the 2 processes" in console
    assert "Traceback" not in console


# ============ preemption of a whole process group: 2 ranks, loader workers ============

PREEMPT = ["--dataset", "folder", "--img-size", "16", "--train-subset", "0", "-b", "8",
           "--steps-per-epoch", "0", "--epochs", "2", "--keep-checkpoints", "0", "-j", "2",
           "--save-freq-steps", "0"]  # fmt: skip


def wait_for_line(proc: subprocess.Popen, out: str, text: str) -> None:
    deadline = time.time() + TIMEOUT
    while True:
        with open(os.path.join(out, "console.txt")) as f:
            if text in f.read():
                return
        assert proc.poll() is None, f"run ended before printing {text!r}"
        assert time.time() < deadline, "run too slow"
        time.sleep(0.01)


def test_sigterm_to_the_process_group_with_loader_workers_saves_once_and_resumes(tmp_path):
    """SIGTERM to every process (launcher, 2 gloo ranks, their 2 loader workers each), as SLURM
    preemption or `kill -- -PGID` delivers it: the workers ignore it, both ranks finish the same
    step, exactly one checkpoint is written, every rank exits 75 (so does the launcher), and the
    requeued run ends where an uninterrupted one ends."""
    root = str(tmp_path / "tree")
    for i in range(40):  # 5 steps of 8 per epoch
        write_image(f"{root}/train/{'cat' if i % 2 else 'dog'}/{i:02d}.jpg", i, size=20)
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    with ThreadPoolExecutor(1) as pool:  # the uninterrupted run, meanwhile
        reference_done = pool.submit(run, ref, *PREEMPT, "--data", root, *ddp_flags())
        proc = start(out, *PREEMPT, "--data", root, *ddp_flags())
        wait_for_line(proc, out, "epoch 0 [1/5]")
        os.killpg(proc.pid, signal.SIGTERM)
        code, console = finish(proc)
        assert code == 75, console[-3000:]
        assert console.count("preempted at epoch 0") == 2, console[-3000:]  # both ranks, one step
        assert "Traceback" not in console and "killed by signal" not in console
        saved = list_checkpoints(out)
        assert len(saved) == 1 and "checkpoint_0000_" in saved[0], saved
        console = run(out, *PREEMPT, "--data", root, *ddp_flags(), "--resume", "auto")
        assert f"resumed from {saved[0]}" in console
        reference_done.result()
    final = "checkpoint_0002_000000.pth.tar"
    ours, theirs = (load_checkpoint(os.path.join(d, final)) for d in (out, ref))
    ours.pop("args"), theirs.pop("args")
    assert_same(ours, theirs)
