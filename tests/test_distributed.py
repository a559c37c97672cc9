"""Under torchrun the chunks of a level are shared out among the ranks; the result is the one-process result."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempo_cli.cli import main
from tempo_cli.latents import load


def test_two_ranks_give_the_single_process_result(tmp_path, monkeypatch):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this python")
    monkeypatch.chdir(tmp_path)
    common = ["--preset", "tiny-random", "--device", "cpu", "--dtype", "fp32", "-q"]
    assert main(["blueprint", "a red ball", "--frames", "5", "-o", "bp.safetensors", *common]) == 0
    assert main(["refine", "bp.safetensors", "--to", "24", "-o", "one.safetensors", *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(port), "-m", "tempo_cli.cli",
                           "refine", "bp.safetensors", "--to", "24", "-o", "two.safetensors", *common],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["two.safetensors"]  # rank 0 alone writes and reports
    one, two = load(tmp_path / "one.safetensors"), load(tmp_path / "two.safetensors")
    assert len(one.chunks) == len(two.chunks) == 4
    for a, b in zip(one.chunks, two.chunks):  # batch composition differs: float rounding only
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
