"""``tempo train``: the two-stage recipe (and the toy VAE) on a folder of captioned videos or the toy world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage

PHASES = ("vae", "stage1", "stage2")


def command(
    out: Annotated[Path, typer.Option("--out", help="Folder for checkpoints and the trained weights; an "
                                      "interrupted run resumes from it.")],
    data: Annotated[str, typer.Option("--data", help="'toyworld', 'toyworld:SEED', or a folder of videos with "
                                      "captions (.txt beside each, or captions.jsonl).")] = "toyworld",
    phase: Annotated[Optional[list[str]], typer.Option("--phase", help="Train only these phases (vae, stage1, "
                                                       "stage2); default all, in order. Repeatable.")] = None,
    cache: Annotated[int, typer.Option("--cache", help="Clips encoded per phase for the DiT steps.")] = 512,
    seed: opt.SeedOpt = 0,
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset with a train section.")] = "toy-init",
    set_: opt.SetOpt = None,
    device: opt.DeviceOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Train a preset's networks (VAE, stage 1, stage 2); prints the trained preset file's path."""
    from tempo_cli import distributed
    from tempo_cli.datasets import open_source
    from tempo_cli.trainer import Trainer

    for name in phase or []:
        if name not in PHASES:
            raise UsageError(f"--phase {name!r}: choose from {', '.join(PHASES)}")
    session = opt.open_session(preset, set_, None, device, "fp32", quiet)
    trainer = Trainer(session.preset, out, open_source(data, session.preset), device=session.store.device,
                      progress=session.progress, seed=seed, cache_size=cache)
    trainer.run(list(phase) if phase else None)
    if distributed.is_main():
        opt.emit_path(str(out / "preset.yaml"))


STAGE = Stage("train", "Train a preset's networks with the two-stage recipe.", command, order=60)
