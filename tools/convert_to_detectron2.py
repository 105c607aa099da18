"""Convert a ResNet backbone of this suite to detectron2's weight format (for detection transfer).

    python tools/convert_to_detectron2.py results/checkpoint_0200_000000.pth.tar r50.pkl
    python tools/convert_to_detectron2.py CKPT r50.pkl --encoder momentum   # a momentum EMA

The pickle is what MoCo's and BeCLR's `detection/convert-pretrain-to-detectron2.py` write: {"model":
{name: numpy array}, "__author__": ..., "matching_heuristics": True}, with torchvision names renamed
to detectron2's (`conv1`/`bn1` -> `stem.conv1`/`stem.conv1.norm`, `layerN` -> `res{N+1}`, `bnK` ->
`convK.norm`, `downsample.0/1` -> `shortcut`/`shortcut.norm`). Unlike theirs, the projector (`fc`)
and BatchNorm's `num_batches_tracked` counters are left out: detectron2's backbone has neither, so
the pickle holds exactly its ResNet's keys. Use it with `MODEL.RESNETS.STRIDE_IN_1X1 False`, RGB
input and ImageNet pixel statistics (torchvision's layout; see docs/protocols.md).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import load_backbone  # noqa: E402

DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Convert a ResNet checkpoint to detectron2", add_help=False)
    parser.add_argument("checkpoint", help="checkpoint of main_pretrain.py (or moco-v3/DSF)")
    parser.add_argument("output", help="detectron2 weights to write, e.g. r50.pkl")
    parser.add_argument("--encoder", default="online", choices=["online", "momentum"],
                        help="which backbone of a momentum method (default online)")
    return parser


def detectron2_name(key: str) -> str:
    """torchvision ResNet parameter name -> detectron2 ResNet name."""
    if not key.startswith("layer"):
        key = "stem." + key
    key = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def check_imagenet_resnet(state: dict, path: str) -> int:
    """Depth of the ResNet in `state`; SystemExit for a ViT, a CIFAR stem or another width."""
    if not any(k.startswith("layer1.") for k in state):
        raise SystemExit(f"error: {path} holds no ResNet backbone (a ViT?): detectron2's R-50 "
                         "transfer needs a ResNet; pretrain with -a resnet50")
    shape = tuple(state["conv1.weight"].shape)
    if shape[2:] != (7, 7):
        raise SystemExit(f"error: {path} has a {shape[2]}x{shape[3]} CIFAR-style conv1 stem; "
                         "detectron2 needs the 7x7 ImageNet stem: pretrain at img-size >= 128")
    if shape[0] != 64:
        raise SystemExit(f"error: {path} is a width-{shape[0]} ResNet; detectron2 needs width 64")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    if blocks not in DEPTHS:
        raise SystemExit(f"error: {path}: stages of {blocks} blocks are no standard ResNet depth")
    return DEPTHS[blocks]


def convert(state: dict) -> dict:
    """{detectron2 name: numpy array}, without the head and BatchNorm's batch counters."""
    return {detectron2_name(k): v.detach().cpu().numpy() for k, v in state.items()
            if not k.startswith(("fc.", "head.")) and not k.endswith("num_batches_tracked")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(parents=[get_args_parser()], description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parser.parse_args(argv)
    try:
        state, _ = load_backbone(args.checkpoint, prefer=args.encoder)
    except (FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    depth = check_imagenet_resnet(state, args.checkpoint)
    weights = convert(state)
    out = {"model": weights, "__author__": "multi-view SSL suite", "matching_heuristics": True}
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(out, f)
    os.replace(tmp, args.output)  # never leave a half-written pickle under its real name
    print(f"wrote {args.output}: {len(weights)} tensors of a ResNet-{depth} "
          f"(detectron2: MODEL.RESNETS.DEPTH {depth}, STRIDE_IN_1X1 False)")


if __name__ == "__main__":
    main(sys.argv[1:])
