import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# whole modules that train, evaluate or launch real runs: `bash main.sh test fast` (pytest -m
# "not slow") leaves them out; a slow test in another module carries @pytest.mark.slow itself
SLOW_MODULES = {"test_end_to_end", "test_recipes", "test_reliability", "test_launch",
                "test_accum", "test_amp", "test_online_probe"}  # kill/resume, fp16 and probe runs


# single tests of other modules that each run for minutes on a loaded 2-core machine, and the
# 2-process equivalence runs (each starts two interpreters): the full tier runs them all
SLOW_TESTS = ("test_lincls.py::test_two_processes_equal_one_on_every_val_image",
              "test_class_subsets.py::test_class_list_flag_reaches_the_loaders",
              "test_host_sync.py::test_one_sync_per_step[mvmr",
              "test_split_views.py::test_split_pretraining_resumes_bit_exactly",
              "test_methods.py::test_one_training_step[mvmr",
              "test_methods.py::test_labels_feed_metrics_never_the_loss[mvmr")


def starts_gloo(item) -> bool:
    """The test calls helpers.run_gloo: a 2-process run, seconds of interpreter start-up each."""
    function = getattr(item, "function", None)
    return function is not None and "run_gloo" in function.__code__.co_names


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        node = f"{item.path.name}::{item.name}"
        if item.path.stem in SLOW_MODULES or node.startswith(SLOW_TESTS) or starts_gloo(item):
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra threads only add overhead on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
