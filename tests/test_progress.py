"""The progress line and the per-step TensorBoard scalars (utils/logger.py Progress)."""

import torch

from utils.logger import Progress


class FakeLogger:
    def __init__(self):
        self.writer, self.written = object(), []

    def scalars(self, values, step):
        self.written.append((step, values))


def test_progress_prints_every_print_freq_and_logs_every_log_freq(capsys):
    logger = FakeLogger()
    progress = Progress(iters=20, batch=64, print_freq=10, log_freq=5, logger=logger,
                        device=torch.device("cpu"))
    for i in range(20):
        progress.batch_ready()
        progress.step_done(0, i, 100 + i, {"loss": torch.tensor(float(i))},
                           {"lr": 0.1, "wd": 0.0, "m": 0.99}, status=lambda: " overflows 0")
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2 and lines[0].startswith("epoch 0 [0/20]  eta ")
    assert "img/s" in lines[1] and "data " in lines[1] and "step " in lines[1]
    assert "overflows 0" in lines[1] and "lr 0.1" in lines[1]
    assert "loss 8" in lines[1]  # the mean since the last read (the scalars at step 105): 6..10
    assert [step for step, _ in logger.written] == [100, 105, 110, 115]
    step, values = logger.written[1]
    assert values["step/loss"] == 3.0 and values["step/lr"] == 0.1  # steps 1-5 since the last read
    assert {"step/img_per_s", "step/data_s", "step/step_s", "step/m", "step/wd"} <= set(values)
