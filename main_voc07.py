"""PASCAL VOC 2007 multi-label classification: a linear layer on a frozen encoder (MV-MR transfer).

    python main_voc07.py --pretrained CKPT --data /data/voc --results_dir RUN   # official settings
    python main_voc07.py --pretrained CKPT --data /data/voc --train-split trainval --val-split test

--data holds torchvision's VOCDetection layout, VOCdevkit/VOC2007/{JPEGImages,Annotations,
ImageSets/Main/<split>.txt} (--data may also point at VOCdevkit or VOC2007). An image's target is
the 20-way 0/1 vector of the classes of its non-difficult objects (MV-MR `encode_labels`). Each
epoch re-extracts the augmented train features (utils/knn.extract_features, so DDP shards the
encoding), then every rank trains the same linear layer on them (BCE with logits, Adam) with the
same seed.
The report: mAP over the classes, as area under the precision-recall curve and as VOC's 11-point
interpolation, and MV-MR's number, the AP of all (image, class) pairs pooled (docs/protocols.md).
"""

import argparse
import json
import os
import time
import xml.etree.ElementTree as ET

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from data.loaders import SeededSamples
from models.encoder import add_encoder_args, build_encoder
from utils import dist
from utils.args import add_common_args, parse_with_config
from utils.knn import extract_features
from utils.misc import bool_flag, seed_everything
from utils.results import write_results
from utils.sampler import ResumableSampler

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOC_MEAN, VOC_STD = (0.45704722, 0.43824774, 0.4061733), (0.23908591, 0.23509644, 0.2397309)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("VOC07 linear multi-label classification", add_help=False)
    add_common_args(parser)
    add_encoder_args(parser)  # --pretrained/--random-init/-a/--encoder ..., as main_knn.py
    g = parser.add_argument_group("VOC07 (defaults: MV-MR configs/imagenet_voc.yaml)")
    g.add_argument("--train-split", default="train",
                   help="ImageSets/Main split to train on (default: train; SVM protocol: trainval)")
    g.add_argument("--val-split", default="val", help="split to report (default: val; SVM protocol: test)")
    g.add_argument("--epochs", default=1000, type=int, help="linear-layer epochs (default: 1000)")
    g.add_argument("-b", "--batch-size", default=32, type=int,
                   help="linear-layer batch (default: 32)")
    g.add_argument("--lr", default=1e-4, type=float, help="Adam learning rate (default: 1e-4)")
    g.add_argument("--wd", default=1e-6, type=float, help="Adam weight decay (default: 1e-6)")
    g.add_argument("--crop", default=300, type=int,
                   help="input size in px (default: 300); val images are resized by --val-resize-ratio "
                        "(1.1), then centre-cropped")
    g.add_argument("--augment", default=True, type=bool_flag,
                   help="re-extract augmented train features each epoch (default: true; false: once, "
                        "un-augmented, far faster)")
    g.add_argument("--eval-freq", default=10, type=int,
                   help="score the val split every N epochs (default: 10)")
    g.add_argument("--extract-batch-size", default=64, type=int,
                   help="per-process encoding batch (default: 64)")
    parser.set_defaults(dataset="voc07", seed=0)
    return parser


# ============ data ============


def voc2007_dir(root: str) -> str:
    """root/VOCdevkit/VOC2007, root/VOC2007 or root itself: the first with the VOC layout."""
    for cand in (os.path.join(root, "VOCdevkit", "VOC2007"), os.path.join(root, "VOC2007"), root):
        if os.path.isdir(os.path.join(cand, "Annotations")):
            for sub in ("JPEGImages", os.path.join("ImageSets", "Main")):
                if not os.path.isdir(os.path.join(cand, sub)):
                    raise SystemExit(f"error: {cand} has Annotations/ but no {sub}/ (VOCDetection"
                                     " layout: VOCdevkit/VOC2007/{JPEGImages,Annotations,"
                                     "ImageSets/Main})")
            return cand
    raise SystemExit(f"error: no VOC2007 under --data {root}: expected {root}/VOCdevkit/VOC2007/"
                     "{JPEGImages,Annotations,ImageSets/Main} (torchvision VOCDetection layout)")


def read_targets(voc: str, ids: list[str]) -> Tensor:
    """[N, 20] float 0/1: the classes of each image's non-difficult objects (MV-MR's rule)."""
    targets = torch.zeros(len(ids), len(VOC_CLASSES))
    for row, image_id in enumerate(ids):
        path = os.path.join(voc, "Annotations", f"{image_id}.xml")
        try:
            objects = ET.parse(path).getroot().findall("object")
        except (OSError, ET.ParseError) as e:
            raise SystemExit(f"error: cannot read annotation {path}: {e}") from None
        for obj in objects:
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise SystemExit(f"error: {path}: unknown class {name!r} (not a VOC class)")
            if int(obj.findtext("difficult") or 0) == 0:
                targets[row, VOC_CLASSES.index(name)] = 1.0
    return targets


class VOC07(Dataset):
    """Images of one ImageSets/Main split; yields (image, row, row), targets in `.targets`.

    The label slot carries the row so that extract_features (single-label) returns the order.
    """

    def __init__(self, voc: str, split: str, transform):
        split_file = os.path.join(voc, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(split_file):
            raise SystemExit(f"error: no split file {split_file} (choose --train-split/--val-split"
                             " among train, val, trainval, test)")
        with open(split_file) as f:
            self.ids = [line.split()[0] for line in f if line.strip()]
        if not self.ids:
            raise SystemExit(f"error: {split_file} lists no image")
        self.images = [os.path.join(voc, "JPEGImages", f"{i}.jpg") for i in self.ids]
        missing = [p for p in self.images if not os.path.isfile(p)]
        if missing:
            raise SystemExit(f"error: {len(missing)} images of {split_file} missing, e.g. "
                             f"{missing[0]}")
        self.targets, self.transform = read_targets(voc, self.ids), transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row: int):
        with open(self.images[row], "rb") as f:  # closed right away: no handle per sample
            image = Image.open(f).convert("RGB")
        return self.transform(image), row, row


def voc_transforms(crop: int, val_ratio: float = 1.1, interpolation: str = "bilinear"
                   ) -> tuple[T.Compose, T.Compose]:
    """MV-MR's (train, val) transforms: square resize + light jitter / resize + centre crop
    (Resize(330) + CenterCrop(300): ratio 1.1)."""
    mode = T.InterpolationMode(interpolation)
    tail = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(VOC_MEAN, VOC_STD)]
    light = T.RandomChoice([T.ColorJitter(brightness=(0.8, 1.2)), T.RandomGrayscale(0.25)])
    train = T.Compose([T.Resize((crop, crop), mode), light,
                       T.RandomHorizontalFlip(0.25), T.RandomRotation(25)] + tail)
    val = T.Compose([T.Resize(round(crop * val_ratio), mode), T.CenterCrop(crop)] + tail)
    return train, val


def feature_loader(dataset: Dataset, args) -> tuple[DataLoader, ResumableSampler]:
    """Index-ordered shards; each sample's augmentation seeded from (seed, epoch, row)."""
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=dist.get_rank(),
                               world_size=dist.get_world_size(), drop_last=False,
                               encode_epoch=True)
    loader = DataLoader(SeededSamples(dataset, args.seed), batch_size=args.extract_batch_size,
                        sampler=sampler, num_workers=args.workers,
                        pin_memory=args.device.type == "cuda",
                        persistent_workers=args.workers > 0)  # re-read every epoch
    return loader, sampler


# ============ metrics ============


def average_precision(scores: Tensor, labels: Tensor, eleven_point: bool = False) -> float:
    """AP of one ranking: area under the precision-recall curve (sum of (R_k - R_k-1) * P_k over
    distinct score thresholds, as sklearn), or VOC07's mean over recall t in {0, 0.1, .., 1} of the
    best precision at recall >= t. NaN without positives."""
    order = scores.double().argsort(descending=True)
    s, y = scores.double()[order], labels.double()[order]
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last row of each group of tied scores is one threshold
    tp, fp = y.cumsum(0)[last], (1 - y).cumsum(0)[last]
    if tp[-1] == 0:
        return float("nan")
    precision, recall = tp / (tp + fp), tp / tp[-1]
    if eleven_point:
        best = [precision[recall >= t].max() if (recall >= t).any() else precision.new_zeros(())
                for t in torch.linspace(0, 1, 11, dtype=torch.float64)]
        return float(torch.stack(best).mean())
    return float((torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum())


def voc_metrics(logits: Tensor, targets: Tensor) -> dict:
    """mAP (%) over the classes with a positive, both AP forms, the pooled AP and per-class APs."""
    area = [average_precision(logits[:, c], targets[:, c]) for c in range(targets.shape[1])]
    eleven = [average_precision(logits[:, c], targets[:, c], True) for c in range(targets.shape[1])]
    valid = [c for c in range(len(area)) if area[c] == area[c]]

    def mean(v: list[float]) -> float:
        return 100.0 * sum(v[c] for c in valid) / max(1, len(valid))

    return {"mAP": mean(area), "mAP_11point": mean(eleven),
            "AP_pooled": 100.0 * average_precision(logits.flatten(), targets.flatten()),
            "classes_scored": len(valid),
            "AP_per_class": {VOC_CLASSES[c]: round(100.0 * area[c], 2) for c in valid}}


# ============ training ============


def train_epoch(head: nn.Linear, optimizer, feats: Tensor, targets: Tensor, epoch: int, args):
    """One pass over the features in shuffled batches; the same order on every rank."""
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(args.seed + epoch))
    total = 0.0
    for start in range(0, len(feats), args.batch_size):
        idx = order[start:start + args.batch_size]
        loss = F.binary_cross_entropy_with_logits(head(feats[idx]), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(feats)


def encoded(encode, loader, sampler, targets: Tensor, epoch: int, args) -> tuple[Tensor, Tensor]:
    """(features [N, D], targets [N, 20]) of a split, rows in split order."""
    sampler.set_epoch(epoch)
    with torch.no_grad():
        feats, rows = extract_features(encode, loader, len(targets), args.device)
    return feats, targets.to(args.device)[rows]


def main(args: argparse.Namespace) -> None:
    dist.launch(main_worker, args)


def main_worker(gpu, args):
    dist.init(gpu, args)
    seed_everything(args.seed)
    t0 = time.time()
    # ============ data ============
    voc = voc2007_dir(args.data)
    train_tf, val_tf = voc_transforms(args.crop, args.val_resize_ratio or 1.1, args.interpolation)
    train_set = VOC07(voc, args.train_split, train_tf if args.augment else val_tf)
    val_set = VOC07(voc, args.val_split, val_tf)
    train_loader, train_sampler = feature_loader(train_set, args)
    val_loader, val_sampler = feature_loader(val_set, args)
    # ============ model ============
    args.img_size = args.img_size or (None if args.pretrained else 224)
    args.dataset = "imagenet"  # only its 224-px default size is read
    encode, run = build_encoder(args)
    val_f, val_y = encoded(encode, val_loader, val_sampler, val_set.targets, 0, args)
    train_f, train_y = encoded(encode, train_loader, train_sampler, train_set.targets, 0, args)
    torch.manual_seed(args.seed)  # the same initial head on every rank
    head = nn.Linear(train_f.shape[1], len(VOC_CLASSES)).to(args.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr, weight_decay=args.wd)
    # ============ train ============
    best, history = None, []
    for epoch in range(args.epochs):
        if args.augment and epoch > 0:
            train_f, train_y = encoded(encode, train_loader, train_sampler, train_set.targets,
                                       epoch, args)
        loss = train_epoch(head, optimizer, train_f, train_y, epoch, args)
        if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
            with torch.no_grad():
                scores = voc_metrics(head(val_f).cpu(), val_y.cpu())
            history.append({"epoch": epoch + 1, "train_loss": loss, "mAP": scores["mAP"]})
            best = scores["mAP"] if best is None else max(best, scores["mAP"])
            print(f"epoch {epoch + 1}: loss {loss:.4f}, {args.val_split} mAP {scores['mAP']:.2f} "
                  f"(11-point {scores['mAP_11point']:.2f}, pooled AP {scores['AP_pooled']:.2f})")
    if dist.is_main_process():
        # the run's identity is its pretraining's (the voc07 section says what was measured)
        args.method, args.arch, args.dataset = run.get("method"), run["arch"], run.get("dataset")
        record = {**scores, "mAP_best": best, "train_split": args.train_split,
                  "val_split": args.val_split, "history": history}
        write_results(args.results_dir, "voc07", args, record, time.time() - t0)
        print(json.dumps({k: scores[k] for k in ("mAP", "mAP_11point", "AP_pooled")}))
    dist.cleanup()


if __name__ == "__main__":
    from models import BACKBONES
    from models.methods import ALIASES, METHODS
    from utils import cli
    from utils.validate import Known

    parser = argparse.ArgumentParser("VOC07 linear classification", parents=[get_args_parser()])
    known = Known(BACKBONES, [*METHODS, *ALIASES], global_batch=False)  # its own --dataset
    cli.run(main, parse_with_config(parser, known=known))
