"""FeatureQueue: the official wrap-around, snapshots, and the checkpoint round trip of the banks."""

from __future__ import annotations

import io

import torch

from losses.base import ViewOutputs
from losses.memory import FeatureQueue
from losses.nnclr import NNCLRLoss
from losses.snclr import SNCLRLoss


def _rows(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """n distinct rows whose first entry is its running id (start, start+1, ...)."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def test_init_rows_are_unit_vectors():
    q = FeatureQueue(7, 5)
    torch.testing.assert_close(q.bank.norm(dim=1), torch.ones(7))
    assert int(q.ptr) == 0
    assert FeatureQueue(4, 2, init="zeros").bank.abs().sum() == 0


def test_enqueue_fills_in_order():
    q = FeatureQueue(10, 3, init="zeros", gather=False)
    q.enqueue(_rows(1, 4))
    q.enqueue(_rows(5, 4))
    assert int(q.ptr) == 8
    torch.testing.assert_close(q.bank[:8], _rows(1, 8))
    assert q.bank[8:].abs().sum() == 0


def test_wrap_around_drops_the_tail():
    # size 10, ptr 8, batch 4: rows 0..1 of the batch go to 8..9, rows 2..3 are dropped, ptr -> 0
    q = FeatureQueue(10, 3, init="zeros", gather=False)
    q.enqueue(_rows(1, 8))
    q.enqueue(_rows(100, 4))
    assert int(q.ptr) == 0
    torch.testing.assert_close(q.bank[8:], _rows(100, 2))
    torch.testing.assert_close(q.bank[:8], _rows(1, 8))  # the dropped rows did not wrap to 0
    q.enqueue(_rows(200, 3))  # writing restarts at 0
    torch.testing.assert_close(q.bank[:3], _rows(200, 3))
    assert int(q.ptr) == 3


def test_exact_fit_resets_pointer():
    # ptr + n == size writes the whole batch and wraps (the `>=` of the official banks)
    q = FeatureQueue(8, 3, init="zeros", gather=False)
    q.enqueue(_rows(1, 4))
    q.enqueue(_rows(5, 4))
    assert int(q.ptr) == 0
    torch.testing.assert_close(q.bank, _rows(1, 8))


def test_batch_larger_than_queue():
    q = FeatureQueue(3, 3, init="zeros", gather=False)
    q.enqueue(_rows(1, 5))
    assert int(q.ptr) == 0
    torch.testing.assert_close(q.bank, _rows(1, 3))


def test_snapshot_is_a_copy():
    q = FeatureQueue(4, 2, gather=False)
    snap = q.snapshot()
    q.enqueue(torch.full((2, 2), 9.0))
    assert not torch.equal(snap, q.bank)
    assert not torch.equal(snap[:2], q.bank[:2]) and torch.equal(snap[2:], q.bank[2:])


def _step(loss: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z, p, k = (torch.randn(2, 6, 8, generator=g) for _ in range(3))
    loss(ViewOutputs(p=p, k=k, z=z), labels=torch.arange(6) % 3)


def _round_trip(make):
    src = make().train()
    for seed in range(4):  # 4 x 6 rows into 16: the 3rd step wraps (drops 2 rows), ptr ends at 6
        _step(src, seed)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a fresh module starts from a different random bank
    dst = make()
    dst.load_state_dict(torch.load(buf, weights_only=True))
    return src.state_dict(), dst.state_dict()


def test_checkpoint_round_trip_snclr():
    src, dst = _round_trip(lambda: SNCLRLoss(0.2, bank_size=16, topk=3, dim=8))
    assert set(src) == {"bank.bank", "bank.ptr", "bank_labels.bank", "bank_labels.ptr"}
    for name in src:
        assert torch.equal(src[name], dst[name]), name
    assert int(dst["bank.ptr"]) == int(dst["bank_labels.ptr"]) == 6
    labels = dst["bank_labels.bank"][:, 0]
    assert ((labels >= 0) & (labels <= 2)).all()  # every row was written by a labelled batch


def test_checkpoint_round_trip_nnclr():
    src, dst = _round_trip(lambda: NNCLRLoss(0.1, queue_size=16, dim=8))
    assert set(src) == {"queue.bank", "queue.ptr", "queue_labels.bank", "queue_labels.ptr"}
    for name in src:
        assert torch.equal(src[name], dst[name]), name
    assert int(dst["queue.ptr"]) == int(dst["queue_labels.ptr"]) == 6
