"""The registry contract, parametrised over every METHODS entry (timm's trick): a new method is
tested as soon as it is registered."""

import argparse

import pytest
import torch

from data.transforms import BatchMultiView
from main_pretrain import get_args_parser
from models.methods import METHODS, build_model

TINY = ["--arch", "resnet18", "--width", "8", "--img-size", "16", "--moco-dim", "16",
        "--moco-mlp-dim", "32", "--proj-hidden-dim", "32", "--proj-dim", "16",
        "--pred-hidden-dim", "32", "--queue-size", "64", "--bank-size", "64", "--topk", "3"]


def tiny_args(method: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    args = parser.parse_args(["--method", method, *TINY, *extra])
    args.device = torch.device("cpu")
    return args


def run_step(method: str, batch: int = 8):
    args = tiny_args(method)
    model, _ = build_model(args)
    criterion = METHODS[method].loss(args)
    specs = METHODS[method].views(args)
    images = torch.randint(0, 256, (batch, 3, 20, 20), dtype=torch.uint8)
    views = BatchMultiView(specs, (0.5,) * 3, (0.25,) * 3)(images)
    if hasattr(model, "update_momentum"):
        model.update_momentum(0.9)
    out = model(views)
    out.extras["labels"] = torch.arange(batch) % 3
    loss, metrics = criterion(out)
    return model, loss, metrics


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_training_step(method):
    model, loss, metrics = run_step(method)
    assert loss.dim() == 0 and torch.isfinite(loss)
    for name, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, name
    loss.backward()
    online = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in online)
    for name, p in model.named_parameters():
        if name.startswith("momentum_"):
            assert p.grad is None, f"{name} received a gradient"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_summary_and_views(method):
    entry = METHODS[method]
    assert entry.summary and len(entry.views(tiny_args(method))) >= 2
