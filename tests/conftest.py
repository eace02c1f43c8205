"""Shared test settings: one torch thread, so the tiny models' matmuls are not dominated by thread hand-offs
(on a shared 2-core machine two threads per process made test runs many times slower)."""

import torch

torch.set_num_threads(1)
