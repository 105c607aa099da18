"""scripts/gpu_check.sh --smoke: the GPU readiness check runs on the CPU, so that it cannot rot.

One run of the whole script (every method through main_pretrain's loop, the CPU comparison and the
2-process gloo DDP comparison), then its Markdown report is read back.
"""

import os
import subprocess

import pytest

from models.methods import METHODS

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--smoke",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    path = os.path.join(out, "report.md")
    assert os.path.exists(path), done.stderr[-3000:]
    assert f"report: {path}" in done.stdout
    with open(path) as f:
        return done.returncode, f.read()


def table(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under `heading` (or the first table), keyed by first cell."""
    section = text.split(heading, 1)[1] if heading else text
    rows = {}
    for line in section.splitlines():
        if line.startswith("## ") and rows:
            break
        if line.startswith("| ") and not line.startswith("| run |") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] not in ("method",):
                rows[cells[0]] = cells
    return rows


def test_every_method_trains_and_reports_speed(report):
    _, text = report
    runs = table(text.split("## ")[0], "")
    assert set(f"{m}-fp16" for m in METHODS) <= set(runs), sorted(runs)
    assert {"simclr-bf16", "mocov3_vit-bf16"} <= set(runs)
    ok = {name: cells for name, cells in runs.items() if cells[-1] == "ok"}
    assert len(ok) == len(runs), {name: cells[-1] for name, cells in runs.items() if name not in ok}
    for name, cells in ok.items():
        img_s, data_pct, tflop = float(cells[5]), float(cells[6]), float(cells[8])
        assert img_s > 0 and 0 <= data_pct <= 100 and tflop > 0, (name, cells)
        assert cells[7] == "n/a" and cells[9] == "n/a"  # no CUDA memory or peak on the CPU


def test_device_and_ddp_steps_match(report):
    _, text = report
    for heading in ("device vs CPU", "DDP over 2 processes (gloo)"):
        rows = table(text, heading)
        assert set(rows) == set(METHODS), (heading, sorted(rows))
        for cells in rows.values():
            assert cells[-1] == "ok", (heading, cells)
            assert float(cells[3]) <= 1e-4 and float(cells[4]) <= 1e-3
