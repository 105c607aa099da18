#!/usr/bin/env bash
# Every run of the suite, copy-pasteable. Usage: bash main.sh COMMAND
#   quickstart   set up, pretrain on the bundled Fashion-MNIST (a few CPU minutes), kNN vs random init
#   test         set up and run the whole test suite
#   <recipe>     a paper run (see the functions below and README's recipe table); DATA=/path/to/data
# Each recipe is written out in full so that its lines can be copied onto a GPU server.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
PY="$VENV/bin/python"
DATA=${DATA:-/path/to/data}
OUT=${OUT:-runs}

quickstart() {
    setup_venv requirements.txt
    fetch_fashion_mnist
    local out=$OUT/quickstart
    rm -rf "$out"
    "$PY" main_pretrain.py --method simclr -a resnet18 --width 16 --dataset fashion_mnist \
        --data "$FMNIST_DIR" -b 128 --optimizer adamw --lr 1e-3 --weight-decay 1e-4 --moco-t 0.2 \
        --epochs 1 --steps-per-epoch 300 --warmup-epochs 0.1 --seed 307 --print-freq 50 \
        --results_dir "$out"
    "$PY" main_knn.py --pretrained "$out"/checkpoint_0001_000000.pth.tar --dataset fashion_mnist \
        --data "$FMNIST_DIR" --nb-knn 20 200 --results_dir "$out" | tee "$out/knn.txt"
    "$PY" main_knn.py --random-init -a resnet18 --width 16 --dataset fashion_mnist \
        --data "$FMNIST_DIR" --nb-knn 20 200 --seed 307 --results_dir "$out" | tee "$out/knn_random.txt"
    "$PY" - "$out" <<'PYEOF'
import json, sys
r = json.load(open(f"{sys.argv[1]}/results.json"))
ours, rand = r["knn"]["top1"]["20"], r["knn_random_init"]["top1"]["20"]
print(f"\nFashion-MNIST weighted kNN top-1 (k=20): pretrained {ours:.2f}%  vs  random init {rand:.2f}%"
      f"  ({ours - rand:+.2f} points after {r['pretrain']['wall_time_s']:.0f} s of pretraining)")
PYEOF
}

test() {
    setup_venv requirements-dev.txt
    fetch_fashion_mnist
    "$PY" -m pytest -q -p no:cacheprovider tests "$@"
}

# ---------------------------------------------------------------- MoCo v3 (facebookresearch/moco-v3)
mocov3_in1k_vits() {  # ViT-S/16, 300 epochs, batch 1024 on 1 node x 8 GPUs; linear 73.2 (README)
    python main_pretrain.py --method mocov3 -a vit_small -b 1024 --optimizer adamw --lr 1.5e-4 \
        --weight-decay .1 --epochs 300 --warmup-epochs 40 --stop-grad-conv1 --moco-m-cos \
        --moco-t .2 --dataset imagenet --data "$DATA" --results_dir "$OUT/mocov3_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_lincls.py -a vit_small --lr 3 -b 1024 --epochs 90 --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/mocov3_vits/checkpoint_0300_000000.pth.tar" --results_dir "$OUT/mocov3_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

mocov3_in1k_r50() {  # ResNet-50, 100 epochs, batch 4096 (4 nodes: set --rank per node); linear 68.9
    python main_pretrain.py --method mocov3 -a resnet50 -b 4096 --optimizer lars --lr .6 \
        --weight-decay 1e-6 --epochs 100 --warmup-epochs 10 --moco-m-cos --moco-t 1.0 --crop-min .2 \
        --dataset imagenet --data "$DATA" --results_dir "$OUT/mocov3_r50" \
        --dist-url tcp://MASTER:10001 --multiprocessing-distributed --world-size 4 --rank 0
    python main_lincls.py -a resnet50 --lr .1 -b 1024 --epochs 90 --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/mocov3_r50/checkpoint_0100_000000.pth.tar" --results_dir "$OUT/mocov3_r50" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# ---------------------------------------------------------------- SimCLR (solo-learn CIFAR recipe)
simclr_cifar10_r18() {  # R18, 1000 epochs, batch 256, LARS 0.4, T 0.2; solo-learn: 90.74 online linear
    python main_pretrain.py --method simclr -a resnet18 -b 256 --optimizer lars --lr 0.4 \
        --weight-decay 1e-4 --epochs 1000 --warmup-epochs 10 --moco-t 0.2 --dataset cifar10 \
        --data "$DATA" --results_dir "$OUT/simclr_cifar10"
    python main_lincls.py --lr 0.1 -b 256 --epochs 100 --dataset cifar10 --data "$DATA" \
        --pretrained "$OUT/simclr_cifar10/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/simclr_cifar10"
}

case "${1:-}" in
    ""|-h|--help) sed -n '2,6p' "$0"; echo "recipes:"; grep -oE '^[a-z0-9_]+\(\)' "$0" | tr -d '()' | grep -vE '^(quickstart|test)$' | sed 's/^/  /' ;;
    *) cmd=$1; shift; "$cmd" "$@" ;;
esac
