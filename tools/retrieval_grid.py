"""Nearest training images of a few test images, in the feature space of the kNN evaluation.

    python tools/retrieval_grid.py --pretrained runs/quickstart/checkpoint_0001_000000.pth.tar \
        --dataset fashion_mnist --queries 8 --neighbours 8 --out grid.png [--train-subset 10000]

Row i shows a query from the val split (grey border), then its top-k training images by cosine
similarity, bordered green when the neighbour's label is the query's and red otherwise. The encoder,
the loaders and the feature extraction are main_knn.py's (build_encoder: backbone features in eval
mode by default; build_eval_loaders; utils.knn.extract_features), so the grid shows the neighbours
the kNN vote uses. Images are shown as the encoder sees them, denormalised with the run's --mean
and --std; labels are the run's class names (a folder tree's class folders). Every flag of
main_knn.py applies (--encoder momentum, --features projector, --random-init, --train-subset).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

import main_knn  # noqa: E402
from data.datasets import dataset_info  # noqa: E402
from data.loaders import build_eval_loaders  # noqa: E402
from models.encoder import build_encoder, inherit_normalisation  # noqa: E402
from utils.args import parse_with_config  # noqa: E402
from utils.knn import extract_features  # noqa: E402

CELL = 1.2  # inches per image
HEADER = 0.4  # inches above the grid, for the caption
DPI = 100
COLOURS = {"query": (0.6, 0.6, 0.6), True: (0.1, 0.7, 0.2), False: (0.85, 0.1, 0.1)}


def image_size(queries: int, neighbours: int) -> tuple[int, int]:
    """(width, height) in pixels of the grid PNG."""
    return round((neighbours + 1) * CELL * DPI), round((queries * CELL + HEADER) * DPI)


def nearest(query_f: Tensor, bank_f: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(cosine similarities, indices) of the k most similar bank rows.

    Shapes: query_f [Q, D], bank_f [N, D] -> [Q, k], [Q, k].
    """
    sim = F.normalize(query_f, dim=1) @ F.normalize(bank_f, dim=1).T  # [Q, N]
    return sim.topk(min(k, bank_f.shape[0]), dim=1)


def load_images(loader: Any, indices: list[int], prepare: Any, device: torch.device) -> Tensor:
    """The encoder's input for dataset rows `indices`: normalised [n, C, H, W]."""
    items = [loader.dataset[i][0] for i in indices]  # uint8 (in-memory) or normalised (folder)
    x = torch.stack([torch.as_tensor(im) for im in items]).to(device)
    return prepare(x) if prepare is not None else x


def denormalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised [C, H, W] -> displayable [H, W, 3] in [0, 1]."""
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    img = (x.detach().float().cpu() * s + m).clamp(0, 1)
    return img.expand(3, -1, -1).permute(1, 2, 0).numpy()


def with_border(img: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """The image inside a coloured frame about 1/14 of its side wide (2 px at 28 px)."""
    w = max(1, img.shape[0] // 14)
    out = np.empty((img.shape[0] + 2 * w, img.shape[1] + 2 * w, 3), dtype=np.float32)
    out[:] = colour
    out[w:-w, w:-w] = img
    return out


def draw_grid(queries: list[np.ndarray], neighbours: list[list[np.ndarray]],
              query_names: list[str], neighbour_names: list[list[str]],
              correct: list[list[bool]], caption: str, out: str) -> str:
    """Save the grid: one row per query, its image then its neighbours (green right, red wrong)."""
    rows, cols = len(queries), len(neighbours[0]) + 1
    width, height = image_size(rows, cols - 1)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - HEADER * DPI / height,
                        wspace=0.05, hspace=0.3)
    for r in range(rows):
        cells = [(queries[r], COLOURS["query"], f"query: {query_names[r]}")]
        cells += [(img, COLOURS[ok], name) for img, ok, name in
                  zip(neighbours[r], correct[r], neighbour_names[r])]
        for ax, (img, colour, title) in zip(axes[r], cells):
            ax.imshow(with_border(img, colour), interpolation="nearest")
            ax.set_title(title, fontsize=6, pad=2)
            ax.axis("off")
    fig.text(0.01, 1 - 0.5 * HEADER * DPI / height, caption, fontsize=9, va="center")
    fig.savefig(out, dpi=DPI)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Retrieval grid", parents=[main_knn.get_args_parser()],
                                     description=__doc__.split("\n\n")[0])
    g = parser.add_argument_group("grid")
    g.add_argument("--queries", default=8, type=int, help="query images from the val split")
    g.add_argument("--neighbours", "--neighbors", default=8, type=int,
                   help="training images shown per query (top-k cosine)")
    g.add_argument("--out", default="grid.png", help="PNG to write")
    return parser


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_with_config(get_args_parser(), argv)
    if not args.pretrained and not args.random_init:
        raise SystemExit("error: give --pretrained CHECKPOINT or --random-init")
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encode, run = build_encoder(args)
    inherit_normalisation(args, run)  # the pretraining's --mean/--std unless given
    size = args.img_size or run.get("img_size") or dataset_info(args.dataset).img_size
    train_loader, val_loader, prepare, info = build_eval_loaders(args, size, args.batch_size)
    bank_f, bank_y = extract_features(encode, train_loader, len(train_loader.dataset),
                                      args.device, prepare)
    # queries: a seeded random draw from the val split, encoded exactly as extract_features does
    g = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    q_idx = torch.randperm(len(val_loader.dataset), generator=g)[:args.queries].tolist()
    q_x = load_images(val_loader, q_idx, prepare, args.device)
    q_y = [int(val_loader.dataset[i][1]) for i in q_idx]
    rows = nearest(encode(q_x).float(), bank_f, args.neighbours)[1].tolist()  # [Q][k] indices
    name = (lambda y: info.classes[y]) if info.classes else str  # the run's class names
    correct = [[int(bank_y[j]) == y for j in row] for row, y in zip(rows, q_y)]
    precision = 100.0 * sum(map(sum, correct)) / max(1, sum(map(len, correct)))
    show = partial(denormalise, mean=info.mean, std=info.std)
    neighbours = [[show(im) for im in load_images(train_loader, row, prepare, args.device)]
                  for row in rows]
    source = os.path.basename(args.pretrained) if not args.random_init else "random init"
    caption = (f"{source} ({run.get('method') or run['arch']}), {args.dataset}: top-"
               f"{len(rows[0])} of {len(bank_y)} training images; same label {precision:.1f}%")
    draw_grid([show(x) for x in q_x], neighbours, [name(y) for y in q_y],
              [[name(int(bank_y[j])) for j in row] for row in rows], correct, caption, args.out)
    print(f"{args.out}: {caption}")
    return {"out": args.out, "precision": precision, "queries": q_idx, "neighbours": rows}


if __name__ == "__main__":
    main()
