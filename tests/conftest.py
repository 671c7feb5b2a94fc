"""Test-wide settings."""

import torch

# The test models are tiny: a second intra-op thread buys nothing and, on a machine where another process holds a
# core, makes every operator wait for the starved thread (a 10x slowdown seen on 2 shared cores).
torch.set_num_threads(1)
