"""Build an ImageNet class subset (IN100.txt by default) from ImageNet, by symlinks or copies.

    python generate_IN100.py --src /data/imagenet --dst /data/in100       # train/ and val/
    python generate_IN100.py --src /data/imagenet --dst /data/in50 --classes in50   # MV-MR's lists
    python generate_IN100.py --source_folder /data/imagenet/train \
        --target_folder /data/in100/train --target_class IN100.txt         # DSF's usage: one split

The source is SRC/<split>/<wnid>/<image> for each of --splits (val in class folders, as
ImageFolder expects); if SRC itself holds the class folders (DSF's usage), it is one split and DST
gets the class folders directly. --classes takes a file of WNIDs or the name of a list shipped
beside this script: in100 (IN100.txt, CMC's list), in50 / in200 (IN50.txt / IN200.txt, MV-MR's
data/imagenet_subsets lists) or in100_mvmr (MV-MR's 100 classes, not the same as IN100.txt).
Every missing class is reported by WNID before anything is
written. Re-running is safe: class folders already linked are kept, and --copy only copies the
files not there yet.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from utils import cli

WNID = re.compile(r"^n\d{8}$")
HERE = os.path.dirname(os.path.abspath(__file__))
CLASS_LISTS = {"in50": "IN50.txt", "in100": "IN100.txt", "in200": "IN200.txt",
               "in100_mvmr": "IN100_mvmr.txt"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Build ImageNet-100 from ImageNet", add_help=False)
    parser.add_argument(
        "--src",
        "--source_folder",
        dest="src",
        required=True,
        help="ImageNet root holding train/ and val/ class folders, or one split folder of "
        "class folders",
    )
    parser.add_argument(
        "--dst",
        "--target_folder",
        dest="dst",
        required=True,
        help="output root (created); gets <split>/<wnid>/ for each split",
    )
    parser.add_argument(
        "--classes",
        "--target_class",
        dest="classes",
        default="in100",
        help="file of WNIDs, one per line, or a shipped list: in50, in100, in200, in100_mvmr "
        "(default: in100)",
    )
    parser.add_argument(
        "--copy",
        action="store_true",
        help="copy the images (default: symlink each class folder, instant and free of space)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val"],
        help="sub-folders of --src to process (default: train val)",
    )
    return parser


def class_list_path(name_or_path: str) -> str:
    """A shipped list's file (in50, in100, in200, in100_mvmr) or the path itself."""
    if name_or_path in CLASS_LISTS:
        return os.path.join(HERE, CLASS_LISTS[name_or_path])
    if not os.path.isfile(name_or_path):
        raise SystemExit(f"error: --classes {name_or_path}: no such file (or give one of "
                         f"{', '.join(CLASS_LISTS)})")
    return name_or_path


def read_classes(path: str) -> list[str]:
    """WNIDs from a text file: one per line; blank lines and '#' comments are ignored."""
    path = class_list_path(path)
    with open(path) as f:
        lines = [line.split("#")[0].strip() for line in f]
    wnids = [line for line in lines if line]
    bad = [w for w in wnids if not WNID.match(w)]
    if bad:
        raise SystemExit(f"error: {path}: not WNIDs (n + 8 digits): {', '.join(bad)}")
    if len(set(wnids)) != len(wnids):
        dups = sorted({w for w in wnids if wnids.count(w) > 1})
        raise SystemExit(f"error: {path}: duplicated WNIDs: {', '.join(dups)}")
    return wnids


def plan(src: str, dst: str, splits: list[str], wnids: list[str]) -> list[tuple[str, str]]:
    """(source split folder, target split folder) pairs, after checking that every class exists."""
    if not os.path.isdir(src):
        raise SystemExit(f"error: source folder {src} does not exist")
    if not any(os.path.isdir(os.path.join(src, s)) for s in splits) and any(
        os.path.isdir(os.path.join(src, w)) for w in wnids
    ):
        pairs = [(src, dst)]  # src is itself a split folder (DSF's usage)
    else:
        pairs = [(os.path.join(src, s), os.path.join(dst, s)) for s in splits]
    for split_src, _ in pairs:
        if not os.path.isdir(split_src):
            raise SystemExit(
                f"error: {split_src} not found: expected {src}/<split>/<wnid>/ for the splits "
                f"{' '.join(splits)} (choose them with --splits)"
            )
        missing = [w for w in wnids if not os.path.isdir(os.path.join(split_src, w))]
        if missing:
            raise SystemExit(
                f"error: {len(missing)} of {len(wnids)} classes missing in {split_src}: "
                + ", ".join(missing)
            )
    return pairs


def link_class(src: str, dst: str) -> bool:
    """Symlink dst -> src (absolute). Returns False if the same link was already there."""
    target = os.path.abspath(src)
    if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(target):
        return False
    if os.path.lexists(dst):
        raise SystemExit(f"error: {dst} exists and is not a link to {target}; remove it first")
    os.symlink(target, dst, target_is_directory=True)
    return True


def copy_class(src: str, dst: str) -> bool:
    """Copy the files of src missing (or of another size) in dst. Returns True if any were."""
    if os.path.islink(dst):
        raise SystemExit(f"error: {dst} is a symlink (made without --copy); remove it first")
    os.makedirs(dst, exist_ok=True)
    copied = False
    for entry in os.scandir(src):
        out = os.path.join(dst, entry.name)
        if entry.is_dir():
            copied |= copy_class(entry.path, out)
        elif not os.path.isfile(out) or os.path.getsize(out) != entry.stat().st_size:
            shutil.copy2(entry.path, out + ".tmp")
            os.replace(out + ".tmp", out)  # never leave a half-copied file under its real name
            copied = True
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        parents=[get_args_parser()],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_debug_flag(parser)
    args = cli.one_line_usage(parser).parse_args(argv)
    wnids = read_classes(args.classes)
    for split_src, split_dst in plan(args.src, args.dst, args.splits, wnids):
        os.makedirs(split_dst, exist_ok=True)
        act = copy_class if args.copy else link_class
        changed = sum(act(os.path.join(split_src, w), os.path.join(split_dst, w)) for w in wnids)
        verb = "copied" if args.copy else "linked"
        kept = len(wnids) - changed
        print(f"{split_dst}: {len(wnids)} classes ({changed} {verb}, {kept} already there)")


if __name__ == "__main__":
    cli.run(main, sys.argv[1:], debug="--debug" in sys.argv[1:])
