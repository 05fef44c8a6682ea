"""The allocator setting of `latticerec train` (train/allocator.py), in a child process: it is
process-wide, so the test process itself is left as it was."""

import subprocess
import sys

import pytest

CHILD = """
import torch
from latticerec.train.allocator import reuse_large_blocks
applied = reuse_large_blocks()
x = torch.ones(2_000_000, 16)  # 128 MB: above glibc's default mmap threshold
y = x * 2
del x
z = torch.zeros(2_000_000, 16)  # reuses the freed block
print(applied, float(y.sum()), float(z.sum()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_reuse_large_blocks_applies_on_glibc_and_tensors_stay_correct():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    applied, y_sum, z_sum = out.stdout.split()
    assert applied == "True" and float(y_sum) == 2 * 2_000_000 * 16 and float(z_sum) == 0.0
