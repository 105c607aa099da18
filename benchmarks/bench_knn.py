"""kNN evaluation throughput and peak memory: utils.knn.knn_classify vs a bare matmul + topk.

    python -m benchmarks.bench_knn [--quick]

A bank of N x D features is searched by Q queries (k up to 200, C classes). Each case runs in its
own subprocess so that the peak resident memory (getrusage maxrss) belongs to that case alone; it
is reported as the rise over the resident size just before the call (the bank and queries
themselves are excluded). The baseline is the least any kNN must do: a chunked matmul of
pre-normalised features and a topk, with knn_classify's own chunk size. 1.28M x 384 vs 50k
(ImageNet-1k with a ViT-S) is too slow for this machine: the 1.28M bank is measured against fewer
queries and projected to 50k (time linear in Q; memory does not grow with Q, the search is
chunked); rows at smaller N show the scaling in N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table, ratio, report, write_json

KS = (20, 200)  # DINO's k = 20 and the --knn-k 200 monitor: topk of 200


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; getrusage only gives the high-water mark)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0), so that setup
    allocations (random data, normalised copies) do not count; getrusage's maxrss cannot be
    reset, hence one subprocess per case as well."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes() -> int:
    """VmHWM (resettable), else getrusage's lifetime maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def bare_topk(train_f: torch.Tensor, test_f: torch.Tensor, k: int, chunk: int) -> None:
    """The floor: similarity of pre-normalised features, chunked, and the top-k; no vote."""
    for start in range(0, test_f.shape[0], chunk):
        (test_f[start:start + chunk] @ train_f.T).topk(k, dim=1)


@torch.no_grad()
def scatter_vote_knn(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                     test_y: torch.Tensor, classes: int, chunk: int,
                     temperature: float = 0.07) -> dict[int, float]:
    """knn_classify's vote with scatter_add_ into [chunk, C] scores instead of a [chunk, k, C]
    one-hot product: O(k) instead of O(k C) per query. A candidate change to utils/knn.py."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    correct = dict.fromkeys(KS, 0)
    for start in range(0, test_f.shape[0], chunk):
        top_sim, top_idx = (test_f[start:start + chunk] @ train_f.T).topk(max(KS), dim=1)
        weights, labels = (top_sim / temperature).exp(), train_y[top_idx]  # [c, kmax]
        truth = test_y[start:start + chunk]
        for k in KS:
            scores = weights.new_zeros(len(truth), classes)
            scores.scatter_add_(1, labels[:, :k], weights[:, :k])  # [c, C]
            correct[k] += int((scores.argmax(1) == truth).sum())
    return {k: 100.0 * v / test_f.shape[0] for k, v in correct.items()}


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def child(n: int, d: int, q: int, classes: int, mode: str, calls: int) -> dict:
    """One case in this (fresh) process: the fastest of `calls` calls, peak memory of the first."""
    from utils.knn import knn_classify

    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(n, d, generator=g), torch.randn(q, d, generator=g)
    train_y = torch.randint(classes, (n,), generator=g)
    test_y = torch.randint(classes, (q,), generator=g)
    chunk = max(1, min(1024, 2**26 // n))  # knn_classify's own chunk size
    if mode == "bare":  # normalising once is not part of the floor
        train_f.div_(train_f.norm(dim=1, keepdim=True))
        test_f.div_(test_f.norm(dim=1, keepdim=True))

        def fn() -> None:
            bare_topk(train_f, test_f, max(KS), chunk)
    elif mode == "scatter":

        def fn() -> None:
            scatter_vote_knn(train_f, train_y, test_f, test_y, classes, chunk)
    else:

        def fn() -> None:
            knn_classify(train_f, train_y, test_f, test_y, ks=KS, num_classes=classes)

    reset_peak()
    before = rss_bytes()
    times = [timed(fn)]
    peak = peak_bytes()
    times += [timed(fn) for _ in range(calls - 1)]
    return {"seconds": min(times), "peak_mb": max(0, peak - before) / 2**20,
            "bank_mb": n * d * 4 / 2**20, "chunk": chunk}


def run_case(n: int, d: int, q: int, classes: int, mode: str) -> dict:
    calls = 1 if n * q > 10**9 else 2  # large cases: one call is warm enough and slow enough
    cmd = [sys.executable, "-m", "benchmarks.bench_knn", "--child", str(n), str(d), str(q),
           str(classes), mode, str(calls)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(n: int, d: int, q: int, classes: int) -> dict:
    res = {mode: run_case(n, d, q, classes, mode) for mode in ("knn", "bare", "scatter")}
    knn, bare, scatter = res["knn"], res["bare"], res["scatter"]
    row = {"N": n, "D": d, "Q": q, "C": classes, "kind": "measured",
           "knn s": knn["seconds"], "bare s": bare["seconds"], "scatter s": scatter["seconds"],
           "knn peak MB": knn["peak_mb"], "bare peak MB": bare["peak_mb"],
           "scatter peak MB": scatter["peak_mb"], "bank MB": knn["bank_mb"],
           "chunk": knn["chunk"]}
    print(f"  N={n:>8} D={d} Q={q} C={classes}: knn {knn['seconds']:.2f} s, bare "
          f"{bare['seconds']:.2f} s, scatter {scatter['seconds']:.2f} s, knn peak "
          f"{knn['peak_mb']:.0f} MB", flush=True)
    return derived(row)


def derived(row: dict) -> dict:
    row["knn/bare"] = ratio(row["knn s"], row["bare s"])
    row["scatter/bare"] = ratio(row["scatter s"], row["bare s"])
    row["queries/s"] = row["Q"] / row["knn s"]
    row["GFLOP/s"] = 2 * row["N"] * row["Q"] * row["D"] / row["knn s"] / 1e9
    return row


def project(measured: dict, q: int) -> dict:
    """The same bank at q queries: time linear in Q (same chunks, same bank), memory unchanged
    (chunked: the similarity block does not grow with Q)."""
    scale = q / measured["Q"]
    row = {**measured, "Q": q, "kind": f"projected from Q = {measured['Q']:,}"}
    for key in ("knn s", "bare s", "scatter s"):
        row[key] = measured[key] * scale
    return derived(row)


COLS = ["N", "D", "Q", "C", "kind", "knn s", "bare s", "knn/bare", "scatter s", "scatter/bare",
        "queries/s", "GFLOP/s", "knn peak MB", "bare peak MB", "scatter peak MB", "bank MB",
        "chunk"]
IMAGENET = 1_281_167


def run(quick: bool = False) -> str:
    """Run the benchmark, write results/knn.json, return the Markdown section."""
    q_main = 2000 if quick else 10000
    print(f"50k x 512 vs {q_main}", flush=True)
    rows = [measure(50_000, 512, q_main, 100)]
    q_small = 128 if quick else 256
    sizes = (50_000,) if quick else (50_000, 200_000)
    print(f"D = 384, C = 1000, Q = {q_small}: scaling in N up to ImageNet-1k", flush=True)
    rows += [measure(n, 384, q_small, 1000) for n in (*sizes, IMAGENET)]
    rows.append(project(rows[-1], 50_000))
    write_json("knn", {"quick": quick, "ks": KS, "rows": rows})
    notes = [
        f"k in {KS} (one topk of {max(KS)}), T = 0.07, fp32, "
        f"{torch.get_num_threads()} threads; one subprocess per case and function",
        "knn = utils.knn.knn_classify (normalise, chunked similarity, topk, one-hot weighted "
        "vote); bare = chunked matmul + topk of pre-normalised features, same chunk size; "
        "scatter = knn_classify with the vote done by scatter_add_ (candidate, in this file)",
        "peak MB = maxrss rise during the call over the resident size before it (bank and "
        "queries excluded; high-water mark reset before the call); time = the faster of two "
        "calls (one for N Q > 1e9)",
        f"1.28M x 384 vs 50k is projected (not measured) from the measured 1.28M x 384 vs "
        f"{q_small:,} row: same bank and chunks, time linear in Q, memory independent of Q",
        f"50k x 512: knn / bare = {rows[0]['knn/bare']:.2f} (target <= 2)",
    ]
    return report("kNN evaluation", [("knn_classify vs bare matmul + topk",
                                      markdown_table(rows, COLS))], notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries, fewer sizes")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)  # N D Q C MODE CALLS
    a = parser.parse_args()
    if a.child:
        n, d, q, c, mode, calls = a.child
        print(json.dumps(child(int(n), int(d), int(q), int(c), mode, int(calls))))
        return
    print(run(a.quick))


if __name__ == "__main__":
    main()
