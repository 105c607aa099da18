"""Per-rank state in checkpoints: buffers that differ between ranks (SNCLR's banks, filled from each
rank's own batches without a gather) are gathered into the checkpoint, and each rank restores its
own; gathered queues (MoCo v2, NNCLR) are identical on every rank and stored once."""

import argparse
import os

import pytest
import torch
from helpers import run_gloo

from losses.nnclr import NNCLRLoss
from losses.snclr import SNCLRLoss
from utils import dist
from utils.checkpoint import (
    load_checkpoint,
    per_rank_buffers,
    restore_training_state,
    save_atomic,
    training_state,
)


def _save_and_restore(rank: int, world: int, path: str) -> dict:
    torch.manual_seed(100 + rank)  # each rank its own random bank, as seed + rank in a run
    criterion = SNCLRLoss(bank_size=12, topk=2, dim=4)
    criterion.bank.enqueue(torch.randn(5, 4))  # this rank's keys: the banks now differ
    criterion.bank_labels.enqueue(torch.full((5, 1), float(rank)))
    saved = {k: v.clone() for k, v in criterion.state_dict().items()}
    args = argparse.Namespace(method="snclr")
    state = training_state({"criterion": criterion}, 0, 1, args, 0, overflow_skipped=3)
    if dist.is_main_process():
        save_atomic(state, path)
    dist.barrier()
    torch.manual_seed(999)  # a fresh process: another random bank, the same on every rank
    fresh = SNCLRLoss(bank_size=12, topk=2, dim=4)
    start = restore_training_state(load_checkpoint(path), {"criterion": fresh}, rank)
    fresh.bank.enqueue(torch.ones(2, 4))  # the host copy of the pointer came back too
    return {"saved": saved, "restored": fresh.state_dict(), "start": start}


def test_each_rank_restores_its_own_bank(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    results = run_gloo(_save_and_restore, path)
    assert not torch.equal(results[0]["saved"]["bank.bank"], results[1]["saved"]["bank.bank"])
    for r in results:
        restored, saved = r["restored"], r["saved"]
        assert torch.equal(restored["bank.bank"][:5], saved["bank.bank"][:5])
        assert torch.equal(restored["bank.bank"][5:7], torch.ones(2, 4))  # written at ptr 5
        assert torch.equal(restored["bank.bank"][7:], saved["bank.bank"][7:])
        assert torch.equal(restored["bank_labels.bank"], saved["bank_labels.bank"])
        assert int(restored["bank.ptr"]) == 7
        assert r["start"]["overflow_skipped"] == 3 and r["start"]["step"] == 1
    ckpt = load_checkpoint(path)
    assert len(ckpt["per_rank"]["criterion"]) == 2


def test_gathered_queues_are_not_per_rank():
    assert per_rank_buffers(NNCLRLoss(queue_size=8, dim=4)) == {}
    assert set(per_rank_buffers(SNCLRLoss(bank_size=8, dim=4))) == {
        "bank.bank", "bank.ptr", "bank_labels.bank", "bank_labels.ptr"}


def test_other_world_size_keeps_rank_zeros_bank_with_a_warning(tmp_path):
    criterion = SNCLRLoss(bank_size=8, dim=4)
    state = training_state({"criterion": criterion}, 0, 1, argparse.Namespace(), 0)
    state["per_rank"]["criterion"] *= 2  # as if saved by 2 ranks
    path = str(tmp_path / "c.pth.tar")
    save_atomic(state, path)
    fresh = SNCLRLoss(bank_size=8, dim=4)
    with pytest.warns(UserWarning, match="per-rank criterion state of 2 ranks"):
        restore_training_state(load_checkpoint(path), {"criterion": fresh}, 0)
    assert torch.equal(fresh.bank.bank, criterion.bank.bank)
    assert os.path.isfile(path)
