"""Settings every test shares: one torch thread, in the test process and in the train.py
processes tests start."""
import os

import torch

# Tests run tiny networks: one thread is as fast and immune to the oversubscription that a
# busy shared machine causes (OpenMP spin-waiting slowed a 2-thread run tenfold here).
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the train.py subprocesses
torch.set_num_threads(1)
