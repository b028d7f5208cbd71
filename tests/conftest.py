import os

# Tiny models on shared cores: one thread avoids OpenMP spin contention (two busy processes with 2 threads each are ~1000x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
