"""Settings every test shares: one torch thread, in the test process and in the train.py
processes tests start; tests marked ``cuda`` skipped where torch sees no CUDA device."""
import os

import pytest
import torch

# Tests run tiny networks: one thread is as fast and immune to the oversubscription that a
# busy shared machine causes (OpenMP spin-waiting slowed a 2-thread run tenfold here).
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the train.py subprocesses
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # CUDA_REQUIRED=1 (bench/device_check.sh): a GPU that torch cannot see fails the tests
    # instead of skipping them; METANAS_CUDA_TESTS_ON=cpu runs them on the CPU (its dry run).
    if torch.cuda.is_available() or os.environ.get("CUDA_REQUIRED") == "1" or os.environ.get("METANAS_CUDA_TESTS_ON"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
