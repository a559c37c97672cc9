"""Under torchrun the chunks of a level are shared out among the ranks; the result is the one-process result.
Training runs data-parallel, sample videos and the decoder phase's pairs included."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tempo_cli.cli import main
from tempo_cli.latents import load


def _torchrun() -> str:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this python")
    return torchrun


def _free_port() -> int:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_ranks_give_the_single_process_result(tmp_path, monkeypatch):
    torchrun = _torchrun()
    monkeypatch.chdir(tmp_path)
    common = ["--preset", "tiny-random", "--device", "cpu", "--dtype", "fp32", "-q"]
    assert main(["blueprint", "a red ball", "--frames", "5", "-o", "bp.safetensors", *common]) == 0
    assert main(["refine", "bp.safetensors", "--to", "24", "-o", "one.safetensors", *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "tempo_cli.cli",
                           "refine", "bp.safetensors", "--to", "24", "-o", "two.safetensors", *common],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["two.safetensors"]  # rank 0 alone writes and reports
    one, two = load(tmp_path / "one.safetensors"), load(tmp_path / "two.safetensors")
    assert len(one.chunks) == len(two.chunks) == 4
    for a, b in zip(one.chunks, two.chunks):  # batch composition differs: float rounding only
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_two_ranks_draw_one_random_seed(tmp_path):
    """``--seed -1`` draws a seed on rank 0 and every rank uses it (ranks that drew their own would denoise their
    chunks of one video from unrelated noise)."""
    script = tmp_path / "draw.py"
    script.write_text("from tempo_cli import distributed\nfrom tempo_cli.options import draw_seed\n"
                      "seed = draw_seed(-1, quiet=True)\nprint(distributed.rank(), seed, flush=True)\n"
                      "distributed.shutdown()\n")
    done = subprocess.run([_torchrun(), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), str(script)], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    drawn = dict(line.split() for line in done.stdout.splitlines())
    assert sorted(drawn) == ["0", "1"] and drawn["0"] == drawn["1"] and int(drawn["0"]) >= 0


TRAIN = """
extends: tiny-random
train: {stage1_steps: 2, stage1_lr: 1.0e-3, stage2_steps: 2, stage2_lr: 1.0e-3, batch_size: 2, clip_frames: 9,
        warmup_steps: 1, checkpoint_every: 2, sample_every: 2}
"""


def test_two_ranks_train_with_sample_videos(tmp_path):
    """Each rank encodes its own clips; the sample videos, whose generation shares chunks, need every rank."""
    (tmp_path / "two-rank-train.yaml").write_text(TRAIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEMPO_PRESETS": str(tmp_path)}
    done = subprocess.run([_torchrun(), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "tempo_cli.cli", "train", "--preset", "two-rank-train",
                           "--data", "toyworld", "--out", "run", "--cache", "4", "--device", "cpu", "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(Path("run") / "preset.yaml")]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "cache").iterdir()) == [
        "stage1-rank0.safetensors", "stage1-rank1.safetensors", "stage2-rank0.safetensors", "stage2-rank1.safetensors"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["stage1-000002.mp4", "stage2-000002.mp4"]


def test_two_ranks_share_out_the_decoder_pairs(tmp_path, monkeypatch):
    """The decoder phase's pairs (the DiT's latents of noised clips, and the clips): each rank denoises its share,
    every rank caches all of them, and they are the pairs one process makes."""
    (tmp_path / "two-rank-train.yaml").write_text(TRAIN)
    monkeypatch.setenv("TEMPO_PRESETS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = ["train", "--preset", "two-rank-train", "--data", "toyworld:3", "--init", "tiny-random", "--phase",
            "decoder", "--device", "cpu", "--set", "train.decoder_steps=1", "--set", "train.decoder_dit_share=1",
            "--set", "train.decoder_dit_pairs=3", "--set", "train.decoder_dit_frames=9"]
    done = subprocess.run([_torchrun(), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "tempo_cli.cli", *args, "--out", "two"],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the DiT's latents of 3 clips (2 on this rank)" in done.stderr  # rank 0's progress: clips 0 and 2
    assert main([*args, "--out", "one", "-q"]) == 0
    one, *ranks = (load_file(str(tmp_path / run / "cache" / f"decoder-pairs-rank{rank}.safetensors"))
                   for run, rank in (("one", 0), ("two", 0), ("two", 1)))
    assert one["latents"].shape[0] == 3 and not torch.equal(one["latents"][0], one["latents"][1])
    for pairs in ranks:
        assert torch.equal(pairs["clips"], one["clips"])
        torch.testing.assert_close(pairs["latents"].float(), one["latents"].float(), atol=2e-2, rtol=2e-2)
