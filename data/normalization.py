"""Per-channel normalisation constants (mean, std in [0, 1]) of the standard datasets."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# the std of the MoCo CIFAR demo, kept by DSF's CIFAR scripts and BeCLR (not the true std)
CIFAR10_STD_MOCO_DEMO = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)  # grayscale replicated to 3 channels
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)
