#!/usr/bin/env bash
# Every run of the suite, copy-pasteable. Usage: bash main.sh COMMAND
#   quickstart   set up, pretrain on the bundled Fashion-MNIST (a few CPU minutes), kNN vs random init
#   test         set up and run the whole test suite
#   results      the table of every run under $OUT beside the papers' numbers, and training curves
#   <recipe>     a paper run (see the functions below and README's recipe table); DATA=/path/to/data
# A recipe is configs/<recipe>.yaml (every training value) launched below with its evaluation lines;
# copy the lines onto a GPU server as they are. docs/recipes.md: what each recipe reproduces.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh  # VENV, PY, FMNIST_DIR; setup_venv, fetch_fashion_mnist, test, results
DATA=${DATA:-/path/to/data}
OUT=${OUT:-runs}

quickstart() {
    setup_venv requirements.txt
    fetch_fashion_mnist
    local out=$OUT/quickstart
    rm -rf "$out"
    # SimCLR, width-16 ResNet-18, one epoch of the 60k training images (bf16 where the CPU has it)
    "$PY" main_pretrain.py --config configs/quickstart.yaml --data "$FMNIST_DIR" --results_dir "$out"
    local ckpt="$out"/checkpoint_0001_000000.pth.tar
    for enc in "--pretrained $ckpt" "--random-init -a resnet18 --width 16 --seed 307"; do
        # the standard protocol (all 60k training images as the bank) and a sparse bank of 2000:
        # random conv features are nearly as good as pixels when the bank is dense
        "$PY" main_knn.py $enc --dataset fashion_mnist --data "$FMNIST_DIR" --nb-knn 20 200 \
            --results_dir "$out" > /dev/null
        "$PY" main_knn.py $enc --dataset fashion_mnist --data "$FMNIST_DIR" --nb-knn 200 \
            --train-subset 2000 --results_dir "$out/sparse" > /dev/null
    done
    "$PY" tools/plots.py "$out" --out "$out" > /dev/null
    quickstart_table "$out"  # pretrained vs random init (scripts/setup.sh)
}

bundled() {  # bash main.sh bundled METHOD|all [SEED...]: every method on the bundled data (CPU)
    local method=${1:?usage: bash main.sh bundled METHOD|all [SEED...]  (configs/bundled/*.yaml)}
    shift
    local seeds=("${@:-0}")
    setup_venv requirements.txt
    fetch_fashion_mnist
    if [ "$method" = all ]; then
        for config in configs/bundled/*.yaml; do bundled "$(basename "$config" .yaml)" "${seeds[@]}"; done
        return
    fi
    if [ ! -f "configs/bundled/$method.yaml" ]; then
        echo "error: no configs/bundled/$method.yaml; choose from: all $(ls configs/bundled | sed 's/\.yaml//' | tr '\n' ' ')" >&2
        exit 2
    fi
    local seed out
    for seed in "${seeds[@]}"; do
        out=$OUT/bundled/$method/seed$seed
        "$PY" main_pretrain.py --config "configs/bundled/$method.yaml" --seed "$seed" \
            --data "$FMNIST_DIR" --resume auto --results_dir "$out"
        # kNN on a sparse bank (2000 training images, k = 200): with the dense 60k bank a random
        # encoder is nearly as good as pixels on Fashion-MNIST and hides learning (README, Tests)
        for enc in "--pretrained $out/checkpoint_0003_000000.pth.tar" \
                   "--random-init --method $method -a resnet18 --width 16"; do
            "$PY" main_knn.py $enc --seed "$seed" --dataset fashion_mnist --data "$FMNIST_DIR" \
                --train-subset 2000 --val-subset 2000 --nb-knn 20 200 --results_dir "$out"
            # linear probe on cached (un-augmented) features, 10 epochs (CPU-sized)
            "$PY" main_lincls.py $enc --seed "$seed" --dataset fashion_mnist --data "$FMNIST_DIR" \
                --cache-features true --epochs 10 --lr 0.1 --results_dir "$out"
        done
    done
}

# ---------------------------------------------------------------- MoCo v3 (facebookresearch/moco-v3)
mocov3_in1k_vits() {  # ViT-S/16, 300 ep, batch 4096 on 4 nodes (set --rank per node); linear 73.2
    python main_pretrain.py --config configs/mocov3_in1k_vits.yaml --data "$DATA" \
        --results_dir "$OUT/mocov3_vits" \
        --dist-url tcp://MASTER:10001 --multiprocessing-distributed --world-size 4 --rank 0
    # CONFIG.md "ViT-Small, linear classification": lr 3, batch 1024, 90 epochs
    python main_lincls.py -a vit_small --lr 3 -b 1024 --epochs 90 --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/mocov3_vits/checkpoint_0300_000000.pth.tar" --results_dir "$OUT/mocov3_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

mocov3_in1k_r50() {  # ResNet-50, 100 ep, batch 4096 on 2 nodes (CONFIG.md; --rank per node); linear 68.9
    python main_pretrain.py --config configs/mocov3_in1k_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mocov3_r50" \
        --dist-url tcp://MASTER:10001 --multiprocessing-distributed --world-size 2 --rank 0
    python main_lincls.py -a resnet50 --lr .1 -b 1024 --epochs 90 --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/mocov3_r50/checkpoint_0100_000000.pth.tar" --results_dir "$OUT/mocov3_r50" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# ---------------------------------------------------------------- SimCLR (solo-learn recipes)
simclr_cifar10_r18() {  # R18, 1000 ep, batch 256, LARS 0.4 (eta 0.02, clip); solo: 90.74 online linear
    python main_pretrain.py --config configs/simclr_cifar10_r18.yaml --data "$DATA" \
        --results_dir "$OUT/simclr_cifar10"
    # offline probe (solo-learn ships no CIFAR linear script; its CIFAR numbers are online)
    python main_lincls.py --lr 0.1 -b 256 --epochs 100 --dataset cifar10 --data "$DATA" \
        --pretrained "$OUT/simclr_cifar10/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/simclr_cifar10"
}

simclr_in100_r18() {  # R18 IN-100, 400 ep, batch 256, LARS 0.3, projector 4096-512; solo: 77.64 online
    python main_pretrain.py --config configs/simclr_in100_r18.yaml --data "$DATA" \
        --results_dir "$OUT/simclr_in100" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    # solo-learn scripts/linear/imagenet-100/simclr.yaml: SGD lr 1.0, wd 0, steps at 60 and 80
    python main_lincls.py -a resnet18 --lr 1.0 -b 256 --epochs 100 --weight-decay 0 \
        --lr-schedule step --lr-steps 60 80 --dataset in100 --data "$DATA" \
        --pretrained "$OUT/simclr_in100/checkpoint_0400_000000.pth.tar" --results_dir "$OUT/simclr_in100" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# ---------------------------------------------------------------- DSF (Jeon789/DSF)
dsf_in100_vits() {  # ViT-S/16 IN-100, 100 ep, total batch 128, ns=4 (DSF main.sh #3); no table in README
    python main_pretrain.py --config configs/dsf_in100_vits.yaml --data "$DATA" \
        --results_dir "$OUT/dsf_in100_vits" \
        --dist-url tcp://localhost:10002 --multiprocessing-distributed --world-size 1 --rank 0
    # main_linclsv3.py: lr 30, batch 256, 30 epochs, cosine
    python main_lincls.py -a vit_small --lr 30 -b 256 --epochs 30 --dataset in100 --data "$DATA" \
        --pretrained "$OUT/dsf_in100_vits/checkpoint_0100_000000.pth.tar" \
        --results_dir "$OUT/dsf_in100_vits" \
        --dist-url tcp://localhost:10002 --multiprocessing-distributed --world-size 1 --rank 0
}

mocov2_dsf_cifar10() {  # R18 CIFAR-10, 250 ep, batch 256, ns=4, 1 GPU, no AMP (DSF main.sh #2)
    python main_pretrain.py --config configs/mocov2_dsf_cifar10.yaml --data "$DATA" \
        --results_dir "$OUT/mocov2_dsf_cifar10"
    # DSF main_lincls.py: lr 30, 30 epochs, cosine (--cos defaults to True), jitter + grey in the
    # training crop, Linear(512, 128) head, the MoCo demo's normalisation
    python main_lincls.py -a resnet18 --lr 30 -b 256 --epochs 30 --crop-min 0.08 --train-aug dsf \
        --head-outputs 128 --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/mocov2_dsf_cifar10" \
        --pretrained "$OUT/mocov2_dsf_cifar10/checkpoint_0250_000000.pth.tar"
}

mocov2_cifar10() {  # the DSF table's baseline: batch 1024, lr 0.12 (= 0.03 x 1024/256), 800 ep
    python main_pretrain.py --config configs/mocov2_cifar10.yaml --data "$DATA" \
        --results_dir "$OUT/mocov2_cifar10"
    python main_lincls.py -a resnet18 --lr 30 -b 256 --epochs 30 --crop-min 0.08 --train-aug dsf \
        --head-outputs 128 --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/mocov2_cifar10" \
        --pretrained "$OUT/mocov2_cifar10/checkpoint_0800_000000.pth.tar"
}
# CIFAR-100: the same two commands with --dataset cifar100 (DSF main.sh runs both datasets).

# ---------------------------------------------------------------- BeCLR (csfarzin/BeCLR)
# Linear: linear.py, Adam 1e-3 (= 5e-4 x 512/256), wd 1e-6, batch 512, 100 epochs, no lr schedule (a
# step after the last epoch), backbone in train mode. kNN: main.py's Bregman monitor (sigma 1.0, k 50).
beclr_cifar10_r50() {  # main.py defaults with the README's batch 512 and 500 epochs, T 0.5, K 100
    python main_pretrain.py --config configs/beclr_cifar10_r50.yaml --data "$DATA" \
        --results_dir "$OUT/beclr_cifar10"
    python main_knn.py --pretrained "$OUT/beclr_cifar10/checkpoint_0500_000000.pth.tar" --dataset cifar10 \
        --data "$DATA" --similarity bregman --sigma 1.0 --temperature 0.5 --nb-knn 50 200 \
        --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 --results_dir "$OUT/beclr_cifar10"
    python main_lincls.py -a resnet50 --optimizer adam --lr 5e-4 --weight-decay 1e-6 -b 512 --epochs 100 \
        --lr-schedule step --lr-steps 100 --head-init default --backbone-mode train \
        --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 --dataset cifar10 --data "$DATA" \
        --pretrained "$OUT/beclr_cifar10/checkpoint_0500_000000.pth.tar" --results_dir "$OUT/beclr_cifar10"
}

beclr_cifar100_r50() {  # the same on CIFAR-100
    python main_pretrain.py --config configs/beclr_cifar100_r50.yaml --data "$DATA" \
        --results_dir "$OUT/beclr_cifar100"
    python main_knn.py --pretrained "$OUT/beclr_cifar100/checkpoint_0500_000000.pth.tar" --dataset cifar100 \
        --data "$DATA" --similarity bregman --sigma 1.0 --temperature 0.5 --nb-knn 50 200 \
        --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 --results_dir "$OUT/beclr_cifar100"
    python main_lincls.py -a resnet50 --optimizer adam --lr 5e-4 --weight-decay 1e-6 -b 512 --epochs 100 \
        --lr-schedule step --lr-steps 100 --head-init default --backbone-mode train \
        --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 --dataset cifar100 --data "$DATA" \
        --pretrained "$OUT/beclr_cifar100/checkpoint_0500_000000.pth.tar" --results_dir "$OUT/beclr_cifar100"
}

beclr_stl10_r50() {  # STL-10 at 96 px: 3x3 stem without max-pool, no blur below 100 px (official)
    python main_pretrain.py --config configs/beclr_stl10_r50.yaml --data "$DATA" \
        --results_dir "$OUT/beclr_stl10"
    python main_knn.py --pretrained "$OUT/beclr_stl10/checkpoint_0500_000000.pth.tar" --dataset stl10 \
        --data "$DATA" --similarity bregman --sigma 1.0 --temperature 0.5 --nb-knn 50 200 \
        --mean 0.4914 0.4822 0.4465 --std 0.2471 0.2435 0.2616 --results_dir "$OUT/beclr_stl10"
    python main_lincls.py -a resnet50 --optimizer adam --lr 5e-4 --weight-decay 1e-6 -b 512 --epochs 100 \
        --lr-schedule step --lr-steps 100 --head-init default --backbone-mode train \
        --mean 0.4914 0.4822 0.4465 --std 0.2471 0.2435 0.2616 --dataset stl10 --data "$DATA" \
        --pretrained "$OUT/beclr_stl10/checkpoint_0500_000000.pth.tar" --results_dir "$OUT/beclr_stl10"
}

beclr_in1k_r50() {  # main_imgnet.py: batch 800, Adam 1e-4, 200 epochs, T 0.1, K 200, H 100
    python main_pretrain.py --config configs/beclr_in1k_r50.yaml --data "$DATA" \
        --results_dir "$OUT/beclr_in1k" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_lincls.py -a resnet50 --optimizer adam --lr 5e-4 --weight-decay 1e-6 -b 512 --epochs 100 \
        --lr-schedule step --lr-steps 100 --head-init default --backbone-mode train \
        --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/beclr_in1k/checkpoint_0200_000000.pth.tar" --results_dir "$OUT/beclr_in1k" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# Detection transfer (BeCLR README -> MoCo detection/): convert the ImageNet BeCLR backbone, then run
# detectron2 (not on PyPI) with MoCo's train_net.py and configs (docs/protocols.md section 3).
beclr_in1k_r50_detection() {  # needs $OUT/beclr_in1k from beclr_in1k_r50; DATA = DETECTRON2_DATASETS
    python tools/convert_to_detectron2.py "$OUT/beclr_in1k/checkpoint_0200_000000.pth.tar" \
        "$OUT/beclr_in1k/beclr_r50_detectron2.pkl"
    # python -m pip install 'git+https://github.com/facebookresearch/detectron2.git'
    # git clone https://github.com/facebookresearch/moco && cd moco/detection
    # DETECTRON2_DATASETS="$DATA" python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml \
    #     --num-gpus 8 MODEL.WEIGHTS "$OUT/beclr_in1k/beclr_r50_detectron2.pkl" OUTPUT_DIR "$OUT/beclr_in1k/voc_det"
}

# ImageNet class subsets : MV-MR's lists
#   python generate_IN100.py --src /data/imagenet --dst /data/in50 --classes in50     # then --dataset in50
#   python generate_IN100.py --src /data/imagenet --dst /data/in200 --classes in200   # then --dataset in200

# ---------------------------------------------------------------- MV-MR (vkinakh/mv-mr)
# Linear: evaluate_self_supervised.py --retrain: Adam 1e-3 (config batch), per-epoch cosine, 100
# epochs, the 'custom' augmentation, the head starting from the online probe, backbone in eval mode.
mvmr_stl10_r50() {  # R50, 1000 epochs, batch 256, Adam 1e-4 wd 1e-6, fp16; linear 89.67 (README)
    python main_pretrain.py --config configs/mvmr_stl10_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mvmr_stl10"
    python main_lincls.py -a resnet50 --optimizer adam --lr 1e-3 -b 256 --epochs 100 --train-aug mvmr \
        --head-init probe --dataset stl10 --data "$DATA" \
        --pretrained "$OUT/mvmr_stl10/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/mvmr_stl10"
}

mvmr_cifar20_r50() {  # batch 512, Adam 2e-4 (= 1e-4 x 512/256); linear 73.2 (README)
    python main_pretrain.py --config configs/mvmr_cifar20_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mvmr_cifar20"
    python main_lincls.py -a resnet50 --optimizer adam --lr 5e-4 -b 512 --epochs 100 --train-aug mvmr \
        --head-init probe --mean 0.491 0.482 0.447 --std 0.247 0.243 0.261 \
        --dataset cifar20 --data "$DATA" \
        --pretrained "$OUT/mvmr_cifar20/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/mvmr_cifar20"
}

mvmr_in1k_r50() {  # 1000 ep, 256 x 8 accumulation on one GPU (configs/mvmr_in1k_r50.yaml); linear 74.5
    python main_pretrain.py --config configs/mvmr_in1k_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mvmr_in1k"
    python main_lincls.py -a resnet50 --optimizer adam --lr 1e-3 -b 256 --epochs 100 --train-aug mvmr \
        --head-init probe --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/mvmr_in1k/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/mvmr_in1k" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# MV-MR distillation of CLIP ViT-B-16 (laion400m_e32): docs/protocols.md section 2. The teacher's
# weights are downloaded once on first use (or copied: HF_HOME=..., HF_HUB_OFFLINE=1).
# Linear: as the MV-MR runs (README: "run the evaluation of the ResNet50 distilled from CLIP, simply
# run self-supervised model evaluation"): evaluate_self_supervised.py --retrain.
mvmr_clip_in1k_r50() {  # R50 student, 100 epochs, batch 256, Adam 1e-4 wd 1e-6, fp16; linear 75.3 (README)
    python main_pretrain.py --config configs/mvmr_clip_in1k_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mvmr_clip_in1k"
    python main_lincls.py -a resnet50 --optimizer adam --lr 1e-3 -b 256 --epochs 100 --train-aug mvmr \
        --head-init probe --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/mvmr_clip_in1k/checkpoint_0100_000000.pth.tar" --results_dir "$OUT/mvmr_clip_in1k" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

mvmr_clip_stl10_r50() {  # 1000 epochs, batch 256, 7x7 stem (small_kernel False); linear 95.6 (README)
    python main_pretrain.py --config configs/mvmr_clip_stl10_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mvmr_clip_stl10"
    python main_lincls.py -a resnet50 --optimizer adam --lr 1e-3 -b 256 --epochs 100 --train-aug mvmr \
        --head-init probe --dataset stl10 --data "$DATA" \
        --pretrained "$OUT/mvmr_clip_stl10/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/mvmr_clip_stl10"
}

mvmr_clip_cifar100_r50() {  # 200 epochs, 3x3 stem, the 'cifar' policy (RandomCrop(32, padding 4) + flip); linear 78.6 (README)
    python main_pretrain.py --config configs/mvmr_clip_cifar100_r50.yaml --data "$DATA" \
        --results_dir "$OUT/mvmr_clip_cifar100"
    python main_lincls.py -a resnet50 --optimizer adam --lr 1e-3 -b 256 --epochs 100 --train-aug mvmr \
        --head-init probe --mean 0.491 0.482 0.447 --std 0.247 0.243 0.261 \
        --dataset cifar100 --data "$DATA" \
        --pretrained "$OUT/mvmr_clip_cifar100/checkpoint_0200_000000.pth.tar" --results_dir "$OUT/mvmr_clip_cifar100"
}

# VOC07 multi-label transfer of the ImageNet MV-MR run (configs/imagenet_voc.yaml settings:
# train split, reported on val, Adam 1e-4 wd 1e-6, batch 32, 1000 epochs, 300 px); DATA holds
# VOCdevkit/VOC2007. Compare AP_pooled with the README's 87.1 (docs/protocols.md section 1).
mvmr_voc07_r50() {  # needs $OUT/mvmr_in1k from mvmr_in1k_r50; README mAP 87.1
    python main_voc07.py --pretrained "$OUT/mvmr_in1k/checkpoint_1000_000000.pth.tar" \
        --data "$DATA" --results_dir "$OUT/mvmr_in1k" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# ---------------------------------------------------------------- NNCLR (solo-learn) and SNCLR (ChongjianGE/SNCLR)
nnclr_cifar10_r18() {  # solo-learn CIFAR-10 recipe: R18, T 0.2, queue 65536, LARS 0.4, bs 256; solo: 91.88
    python main_pretrain.py --config configs/nnclr_cifar10_r18.yaml --data "$DATA" \
        --results_dir "$OUT/nnclr_cifar10"
    # offline probe (solo-learn ships no CIFAR linear script; its CIFAR numbers are online)
    python main_lincls.py --lr 0.1 -b 256 --epochs 100 --dataset cifar10 --data "$DATA" \
        --pretrained "$OUT/nnclr_cifar10/checkpoint_1000_000000.pth.tar" --results_dir "$OUT/nnclr_cifar10"
}

nnclr_in100_r18() {  # solo-learn IN-100 recipe (R18, 400 ep, T 0.2, queue 65536); solo: 80.16 offline
    python main_pretrain.py --config configs/nnclr_in100_r18.yaml --data "$DATA" \
        --results_dir "$OUT/nnclr_in100" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    # solo-learn scripts/linear/imagenet-100/nnclr.yaml: SGD lr 0.3, wd 0, steps at 60 and 80
    python main_lincls.py -a resnet18 --lr 0.3 -b 256 --epochs 100 --weight-decay 0 \
        --lr-schedule step --lr-steps 60 80 --dataset in100 --data "$DATA" \
        --pretrained "$OUT/nnclr_in100/checkpoint_0400_000000.pth.tar" --results_dir "$OUT/nnclr_in100" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

snclr_in1k_vits() {  # official start.sh: ViT-S, 4 nodes x 8 GPUs (set --rank per node), bank 128000/GPU, top-30
    # lr 1.5e-5 as committed in start.sh (the repo's other launch script and MoCo v3 use 1.5e-4)
    python main_pretrain.py --config configs/snclr_in1k_vits.yaml --data "$DATA" \
        --results_dir "$OUT/snclr_vits" \
        --dist-url tcp://MASTER:13848 --multiprocessing-distributed --world-size 4 --rank 0
    python main_lincls.py -a vit_small --lr 3 -b 1024 --epochs 90 --dataset imagenet --data "$DATA" \
        --pretrained "$OUT/snclr_vits/checkpoint_0300_000000.pth.tar" --results_dir "$OUT/snclr_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

# ---------------------------------------------------------------- PatchMix (visresearch/patchmix)
# kNN (main_knn.py) and linear (main_linear.py): val Resize(size x 256/224, bicubic) + CenterCrop, so
# 32 -> 36 -> 32 on CIFAR; ImageNet statistics everywhere. Linear: timm's 'sgd' (Nesterov), bicubic
# crops, nn.Linear's default init; lr per config/linear/vit_{tiny,small,base}_linear.py (x bs/256).
patchmix_in1k_vits() {  # ViT-S/16, 300 ep, batch 1024 (8 GPUs), 2x224 + 8x96 crops; README linear 77.4, kNN 73.3
    python main_pretrain.py --config configs/patchmix_in1k_vits.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_vits/checkpoint_0300_000000.pth.tar" --encoder momentum \
        --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic --val-resize-ratio 256/224 \
        --dataset imagenet --data "$DATA" --results_dir "$OUT/patchmix_vits"
    python main_lincls.py -a vit_small --encoder momentum --lr 0.02 -b 1024 --epochs 100 --optimizer nesterov \
        --interpolation bicubic --val-resize-ratio 256/224 --head-init default --lr-lag 1 \
        --dataset imagenet --data "$DATA" --pretrained "$OUT/patchmix_vits/checkpoint_0300_000000.pth.tar" \
        --results_dir "$OUT/patchmix_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

patchmix_in1k_vitb() {  # ViT-B/16, 300 ep, batch 1024 (8 GPUs), 2x224 + 8x96 crops; README linear 80.2, kNN 76.2
    python main_pretrain.py --config configs/patchmix_in1k_vitb.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_vitb" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_vitb/checkpoint_0300_000000.pth.tar" --encoder momentum \
        --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic --val-resize-ratio 256/224 \
        --dataset imagenet --data "$DATA" --results_dir "$OUT/patchmix_vitb"
    python main_lincls.py -a vit_base --encoder momentum --lr 0.01 -b 1024 --epochs 100 --optimizer nesterov \
        --interpolation bicubic --val-resize-ratio 256/224 --head-init default --lr-lag 1 \
        --dataset imagenet --data "$DATA" --pretrained "$OUT/patchmix_vitb/checkpoint_0300_000000.pth.tar" \
        --results_dir "$OUT/patchmix_vitb" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}

patchmix_cifar10_vitt() {  # ViT-T/2, 800 ep, batch 512, no momentum encoder; README linear 94.4, kNN 92.9
    python main_pretrain.py --config configs/patchmix_cifar10_vitt.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_c10_vitt" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_c10_vitt/checkpoint_0800_000000.pth.tar" \
        --encoder online --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic \
        --val-resize-ratio 256/224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/patchmix_c10_vitt"
    python main_lincls.py -a vit_tiny --patch-size 2 --img-size 32 --encoder online --lr 0.05 -b 256 \
        --epochs 100 --optimizer nesterov --interpolation bicubic --val-resize-ratio 256/224 \
        --head-init default --lr-lag 1 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/patchmix_c10_vitt" \
        --pretrained "$OUT/patchmix_c10_vitt/checkpoint_0800_000000.pth.tar"
}

patchmix_cifar10_vits() {  # ViT-S/2, 800 ep, batch 512; README linear 96.0, kNN 94.6
    python main_pretrain.py --config configs/patchmix_cifar10_vits.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_c10_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_c10_vits/checkpoint_0800_000000.pth.tar" \
        --encoder momentum --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic \
        --val-resize-ratio 256/224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/patchmix_c10_vits"
    python main_lincls.py -a vit_small --patch-size 2 --img-size 32 --encoder momentum --lr 0.02 -b 256 \
        --epochs 100 --optimizer nesterov --interpolation bicubic --val-resize-ratio 256/224 \
        --head-init default --lr-lag 1 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/patchmix_c10_vits" \
        --pretrained "$OUT/patchmix_c10_vits/checkpoint_0800_000000.pth.tar"
}

patchmix_cifar10_vitb() {  # ViT-B/2, 800 ep, batch 512; README linear 96.6, kNN 95.8
    python main_pretrain.py --config configs/patchmix_cifar10_vitb.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_c10_vitb" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_c10_vitb/checkpoint_0800_000000.pth.tar" \
        --encoder momentum --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic \
        --val-resize-ratio 256/224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/patchmix_c10_vitb"
    python main_lincls.py -a vit_base --patch-size 2 --img-size 32 --encoder momentum --lr 0.01 -b 256 \
        --epochs 100 --optimizer nesterov --interpolation bicubic --val-resize-ratio 256/224 \
        --head-init default --lr-lag 1 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar10 --data "$DATA" --results_dir "$OUT/patchmix_c10_vitb" \
        --pretrained "$OUT/patchmix_c10_vitb/checkpoint_0800_000000.pth.tar"
}

patchmix_cifar100_vitt() {  # ViT-T/2, 800 ep, batch 512, no momentum encoder; README linear 74.7, kNN 68.8
    python main_pretrain.py --config configs/patchmix_cifar100_vitt.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_c100_vitt" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_c100_vitt/checkpoint_0800_000000.pth.tar" \
        --encoder online --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic \
        --val-resize-ratio 256/224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar100 --data "$DATA" --results_dir "$OUT/patchmix_c100_vitt"
    python main_lincls.py -a vit_tiny --patch-size 2 --img-size 32 --encoder online --lr 0.05 -b 256 \
        --epochs 100 --optimizer nesterov --interpolation bicubic --val-resize-ratio 256/224 \
        --head-init default --lr-lag 1 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar100 --data "$DATA" --results_dir "$OUT/patchmix_c100_vitt" \
        --pretrained "$OUT/patchmix_c100_vitt/checkpoint_0800_000000.pth.tar"
}

patchmix_cifar100_vits() {  # ViT-S/2, 800 ep, batch 512; README linear 78.7, kNN 75.4
    python main_pretrain.py --config configs/patchmix_cifar100_vits.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_c100_vits" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_c100_vits/checkpoint_0800_000000.pth.tar" \
        --encoder momentum --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic \
        --val-resize-ratio 256/224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar100 --data "$DATA" --results_dir "$OUT/patchmix_c100_vits"
    python main_lincls.py -a vit_small --patch-size 2 --img-size 32 --encoder momentum --lr 0.02 -b 256 \
        --epochs 100 --optimizer nesterov --interpolation bicubic --val-resize-ratio 256/224 \
        --head-init default --lr-lag 1 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar100 --data "$DATA" --results_dir "$OUT/patchmix_c100_vits" \
        --pretrained "$OUT/patchmix_c100_vits/checkpoint_0800_000000.pth.tar"
}

patchmix_cifar100_vitb() {  # ViT-B/2, 800 ep, batch 512; README linear 79.7, kNN 75.7
    python main_pretrain.py --config configs/patchmix_cifar100_vitb.yaml --data "$DATA" \
        --results_dir "$OUT/patchmix_c100_vitb" \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
    python main_knn.py --pretrained "$OUT/patchmix_c100_vitb/checkpoint_0800_000000.pth.tar" \
        --encoder momentum --nb-knn 10 20 100 200 --temperature 0.07 --interpolation bicubic \
        --val-resize-ratio 256/224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar100 --data "$DATA" --results_dir "$OUT/patchmix_c100_vitb"
    python main_lincls.py -a vit_base --patch-size 2 --img-size 32 --encoder momentum --lr 0.01 -b 256 \
        --epochs 100 --optimizer nesterov --interpolation bicubic --val-resize-ratio 256/224 \
        --head-init default --lr-lag 1 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --dataset cifar100 --data "$DATA" --results_dir "$OUT/patchmix_c100_vitb" \
        --pretrained "$OUT/patchmix_c100_vitb/checkpoint_0800_000000.pth.tar"
}

# ---------------------------------------------------------------- Fine-tuning and semi-supervised (main_finetune.py)
# Each fine-tunes into its own directory under the pretraining run (a pretraining directory is
# refused by main_finetune.py: the checkpoint names are the same). $DATA, $OUT as in main.sh.
# The pretraining function each one follows is named in the comment. The recipe is
# configs/finetune/CONFIG.yaml; `finetune CONFIG RUN EPOCH DIR [FLAGS]` runs it from
# $OUT/RUN/checkpoint_EPOCH_000000.pth.tar into $OUT/RUN/DIR:
finetune() {
    local config=$1 run=$2 epoch=$3 dir=$4
    shift 4
    python main_finetune.py --config "configs/finetune/$config.yaml" --data "$DATA" \
        --pretrained "$OUT/$run/checkpoint_${epoch}_000000.pth.tar" --results_dir "$OUT/$run/$dir" "$@"
}

finetune_patchmix_cifar10_vitt() {  # after patchmix_cifar10_vitt; README fine-tune 97.5
    finetune patchmix_cifar10_vitt patchmix_c10_vitt 0800 finetune
}
finetune_patchmix_cifar10_vits() {  # after patchmix_cifar10_vits; README fine-tune 98.1
    finetune patchmix_cifar10_vits patchmix_c10_vits 0800 finetune
}
finetune_patchmix_cifar10_vitb() {  # after patchmix_cifar10_vitb; README fine-tune 98.3
    finetune patchmix_cifar10_vitb patchmix_c10_vitb 0800 finetune
}
finetune_patchmix_cifar100_vitt() {  # after patchmix_cifar100_vitt; README fine-tune 84.9
    finetune patchmix_cifar100_vitt patchmix_c100_vitt 0800 finetune
}
finetune_patchmix_cifar100_vits() {  # after patchmix_cifar100_vits; README fine-tune 86.0
    finetune patchmix_cifar100_vits patchmix_c100_vits 0800 finetune
}
finetune_patchmix_cifar100_vitb() {  # after patchmix_cifar100_vitb; README fine-tune 86.0
    finetune patchmix_cifar100_vitb patchmix_c100_vitb 0800 finetune
}
finetune_patchmix_in1k_vits() {  # after patchmix_in1k_vits; 8 GPUs, batch 1024; README fine-tune 82.8
    finetune patchmix_in1k_vits patchmix_vits 0300 finetune \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}
finetune_patchmix_in1k_vitb() {  # after patchmix_in1k_vitb; 8 GPUs, batch 1024; README fine-tune 84.1
    finetune patchmix_in1k_vitb patchmix_vitb 0300 finetune \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}
finetune_mocov3_in1k_vits() {  # after mocov3_in1k_vits; DeiT defaults, 300 ep, batch 1024; README 81.4
    finetune mocov3_in1k_vits mocov3_vits 0300 finetune \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}
finetune_mocov3_in1k_vitb() {  # after a ViT-B MoCo v3 pretraining (mocov3_in1k_vits with -a vit_base); 150 ep; README 83.2
    finetune mocov3_in1k_vitb mocov3_vitb 0300 finetune \
        --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0
}
finetune_mvmr_in1k_semi1() {  # after mvmr_in1k_r50; 1 % of the labels; README 56.1 / 79.4
    finetune mvmr_in1k_semi1 mvmr_in1k 1000 semi1
}
finetune_mvmr_in1k_semi10() {  # after mvmr_in1k_r50; 10 % of the labels; README 69.9 / 89.5
    finetune mvmr_in1k_semi10 mvmr_in1k 1000 semi10
}
finetune_mvmr_stl10_semi1() {  # after mvmr_stl10_r50; 1 % of the STL-10 train labels (no README number)
    finetune mvmr_stl10_semi1 mvmr_stl10 1000 semi1
}
finetune_mvmr_stl10_semi10() {  # after mvmr_stl10_r50; 10 % of the STL-10 train labels (no README number)
    finetune mvmr_stl10_semi10 mvmr_stl10 1000 semi10
}
finetune_beclr_cifar10_semi10() {  # after beclr_cifar10_r50; 5000 of 50000 labels (no README number)
    finetune beclr_cifar10_semi10 beclr_cifar10 0500 semi10
}

case "${1:-}" in
    ""|-h|--help) sed -n '2,8p' "$0"; echo "recipes:"; grep -oE '^[a-z0-9_]+\(\)' "$0" | tr -d '()' | grep -vE '^(quickstart|finetune)$' | sed 's/^/  /' ;;
    *) cmd=$1; shift; "$cmd" "$@" ;;
esac
