"""The pool of reused output blocks of the CPU operators (csrc/buffer_pool.cpp).

A freed full-size output goes back to the pool and the next output of the same byte size reuses
it (no fresh pages to fault in); reused memory never leaks into results; CVPODS_OUTPUT_POOL_MB
sets the budget (0 disables the pool) and a bad value is refused with the variable's name.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F

import cvpods  # noqa: F401  (registers torch.ops.cvpods)
from cvpods.layers.masked_conv import masked_conv2d


def _fuse(x: torch.Tensor) -> torch.Tensor:
    one = torch.ones(1)
    return torch.ops.cvpods.fuse_neighbours(x, None, None, one, one)


def test_a_freed_output_is_reused_for_the_next_output_of_its_size() -> None:
    x = torch.randn(1, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    first = _fuse(x)
    address = first.data_ptr()
    del first
    second = _fuse(x)
    assert second.data_ptr() == address
    assert second.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(second, x)


def test_reused_memory_does_not_leak_into_results() -> None:
    """A masked convolution writes zeros at inactive positions even when its output block held
    other values: fill the pool's block with NaN, then convolve with a sparse mask."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(16, 16, 3, 3, generator=gen)
    mask = torch.rand(1, 9, 11, generator=gen) > 0.7
    garbage = _fuse(x).fill_(float("nan"))  # a block of the output's size, then freed
    del garbage
    out = masked_conv2d(x, mask, weight, None, 1)
    expected = F.conv2d(x.double(), weight.double(), padding=1) * mask[:, None]
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


def _run(env_value: str) -> subprocess.CompletedProcess:
    code = (
        "import torch, cvpods\n"
        "x = torch.randn(1, 16, 9, 11).contiguous(memory_format=torch.channels_last)\n"
        "one = torch.ones(1)\n"
        "a = torch.ops.cvpods.fuse_neighbours(x, None, None, one, one)\n"
        "p = a.data_ptr(); del a\n"
        "b = [torch.ops.cvpods.fuse_neighbours(x, None, None, one, one) for _ in range(4)]\n"
        "print('reused' if any(t.data_ptr() == p for t in b) else 'fresh')\n"
    )
    env = dict(os.environ, CVPODS_OUTPUT_POOL_MB=env_value)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_budget_comes_from_the_environment_and_a_bad_one_is_refused() -> None:
    assert _run("64").stdout.strip() == "reused"
    # Budget 0: the blocks come from the system allocator, which may or may not hand the same
    # address back; the operators must simply work.
    assert _run("0").returncode == 0
    bad = _run("lots")
    assert bad.returncode != 0
    assert "CVPODS_OUTPUT_POOL_MB" in bad.stderr and "'lots'" in bad.stderr
