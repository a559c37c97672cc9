"""``tempo train``: the two-stage recipe (and the toy VAE) on a folder of captioned videos or the toy world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage

PHASES = ("vae", "stage1", "stage2", "classifier", "decoder")  # training.PHASES, without importing torch


def command(
    out: Annotated[Path, typer.Option("--out", help="Folder for checkpoints and the trained weights; an "
                                      "interrupted run resumes from it.")],
    data: Annotated[str, typer.Option("--data", help="'toyworld', 'toyworld:SEED', or a folder of videos with "
                                      "captions (.txt beside each, or captions.jsonl).")] = "toyworld",
    phase: Annotated[Optional[list[str]], typer.Option("--phase", help="Train only these phases (vae, stage1, "
                                                       "stage2, classifier, decoder); default all, in order. "
                                                       "Repeatable.")] = None,
    cache: Annotated[int, typer.Option("--cache", help="Clips encoded per DiT phase (kept in DIR/cache and "
                                       "reused by later runs with the same VAE and settings).")] = 512,
    prepare: Annotated[bool, typer.Option("--prepare", help="Only encode the DiT phases' clips into DIR/cache "
                                          "(the VAE must be trained or frozen); train nothing.")] = False,
    more: Annotated[int, typer.Option("--more", help="Train the finished phase named by --phase this many more "
                                      "steps: a new warm-up and cosine cycle from its trained weights.")] = 0,
    init: Annotated[Optional[str], typer.Option("--init", help="Start a new run from a trained preset's weights "
                                                "(name or YAML path), network by network where the architecture is "
                                                "the same, or a DiT grown into a deeper one; a VAE taken over counts "
                                                "as trained.")] = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the run's latest checkpoint in --out as "
                                                   "a preset folder DIR and train nothing: an unfinished DiT phase "
                                                   "gives its EMA weights. Works while the run trains.")] = None,
    average: Annotated[Optional[str], typer.Option("--average", help="With --export: average the exported DiT "
                                                   "and text encoder with a trained preset's (name or YAML path; "
                                                   "same architecture and VAE), a model soup of two fine-tunes "
                                                   "from one start.")] = None,
    average_weight: Annotated[float, typer.Option("--average-weight", help="How far --average moves towards the "
                                                  "named preset: 0.5 is the plain mean.")] = 0.5,
    export_dtype: Annotated[str, typer.Option("--export-dtype", help="dtype of the exported weights: fp32, or "
                                              "bf16 for half the size (the checkpoint keeps float32).")] = "fp32",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the clips drawn, their order and the noise: "
                                      "a resumed run must be given the same one.")] = 0,
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset with a train section.")] = "toy-init",
    set_: opt.SetOpt = None,
    device: opt.DeviceOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Train a preset's networks (VAE, stage 1, stage 2); prints the trained preset file's path."""
    import torch

    from tempo_cli import distributed
    from tempo_cli.datasets import open_source
    from tempo_cli.runtime import DTYPES
    from tempo_cli.trainer import Trainer

    for name in phase or []:
        if name not in PHASES:
            raise UsageError(f"--phase {name!r}: choose from {', '.join(PHASES)}")
    if cache < 1:
        raise UsageError(f"--cache must be at least 1, got {cache}")
    if seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {seed}",
                         hint="a run's seed keys its clips and must be the same on every resume; none is drawn "
                              "at random")
    if more < 0 or (more and prepare):
        raise UsageError(f"--more takes a positive number of steps and does not go with --prepare, got {more}")
    if export is not None and (prepare or more or init is not None or phase):
        raise UsageError("--export only writes the checkpoint out: it does not go with --prepare, --more, --init "
                         "or --phase")
    if average is not None and export is None:
        raise UsageError("--average goes with --export: it averages the weights being exported")
    if not 0 < average_weight < 1:
        raise UsageError(f"--average-weight must be between 0 and 1, got {average_weight}")
    if DTYPES.get(export_dtype) not in (torch.float32, torch.bfloat16):
        raise UsageError(f"--export-dtype {export_dtype!r}: choose fp32 or bf16")
    session = opt.open_session(preset, set_, None, device, "fp32", quiet, notice=False)
    trainer = Trainer(session.preset, out, open_source(data, session.preset), device=session.store.device,
                      progress=session.progress, seed=seed, cache_size=cache, export_dtype=DTYPES[export_dtype],
                      init=init is not None)
    if export is not None:
        what = trainer.export_checkpoint(export, _trained(average) if average else None, average_weight)
        session.progress.log(f"exported {out / 'checkpoint.safetensors'} ({what}) to {export}")
        opt.emit_path(str(export / "preset.yaml"))
        return
    if init is None and not trainer.resumed and not prepare and not session.preset.weights.is_random:
        session.progress.log(f"starting from {preset}'s weight files: each phase it runs trains on from them, "
                             f"the VAE's too (--init {preset} takes them with the VAE phase done; a preset with "
                             "random weights, such as toy-init, starts afresh)")
    if init is not None:
        trainer.take_over(_trained(init))
    trainer.run(list(phase) if phase else None, prepare_only=prepare, more=more)
    if distributed.is_main() and not prepare:
        opt.emit_path(str(out / "preset.yaml"))


def _trained(name_or_path: str):
    """A trained preset, called in messages and descriptions what the user called it: the preset a YAML path loads is
    named after the file, and an exported run's file is always ``preset.yaml``."""
    import dataclasses

    from tempo_cli.presets import load_preset

    return dataclasses.replace(load_preset(name_or_path), name=name_or_path)


STAGE = Stage("train", "Train a preset's networks with the two-stage recipe.", command, order=60)
