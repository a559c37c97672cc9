"""Options shared by the stage commands, declared once, and the set-up every stage does with them.

Stage modules import the ``Annotated`` aliases below for their Typer signatures and call :func:`open_session`
to get the preset, a model store and the progress reporter. No torch import at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tempo_cli.errors import UsageError

if TYPE_CHECKING:
    from tempo_cli.config import Preset
    from tempo_cli.pipeline import Progress
    from tempo_cli.runtime import ModelStore

PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name or YAML path "
                                                  "(default: the input file's preset, else toy, the shipped toy model).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a preset value, e.g. "
                                                     "--set sampler.steps=[20,10,10]. Repeatable.")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Folder with the preset's weight files "
                                                    "(files it lacks: from $TEMPO_WEIGHTS, the preset's own folder, "
                                                    "then its cache folder).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N (default: CUDA if present).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="bf16, fp16 or fp32 (default: bf16 on CUDA and "
                                                 "on CPUs with native bf16, else fp32).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the whole run; each level and chunk draws its own "
                                      "noise stream from it. -1 draws one at random (said on stderr and kept in "
                                      "the latent file's header).")]
GuidanceOpt = Annotated[Optional[float], typer.Option("--guidance-scale", "--cfg", help="Guidance scale of every "
                                                      "level (default: the preset's; 1 turns guidance off; one per "
                                                      "level: --set sampler.guidance_scale=[4,2,1]).")]
NegativeOpt = Annotated[Optional[str], typer.Option("--negative-prompt", help="What the video should not show: "
                                                    "the guidance's negative prompt (default: the preset's).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps per level (default: preset's).")]
MicroBatchOpt = Annotated[Optional[int], typer.Option("--micro-batch", help="Chunks denoised at once (default: "
                                                      "all chunks of a level).")]
VideoOpt = Annotated[Optional[Path], typer.Option("--video", help="Video to redraw with the prompt "
                                                 "(video-to-video): its frames at the blueprint's rate, noised to "
                                                 "--strength. Its length unless --seconds/--frames.")]
StrengthOpt = Annotated[Optional[float], typer.Option("--strength", help="With --video: how far its frames are "
                                                      "noised, in (0, 1]; lower keeps more of it (default 0.8).")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Output file; '-' writes to stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
MetadataOpt = Annotated[bool, typer.Option("--metadata/--no-metadata", help="Keep the latent file's header (prompt, "
                                           "seed, settings) in the .mp4, .webm or .png written.")]
OffloadOpt = Annotated[bool, typer.Option("--offload", help="Keep the DiT's blocks in CPU memory, each moving "
                                          "to the GPU for its own forward (for GPUs smaller than the model).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AllowMismatchOpt = Annotated[bool, typer.Option("--allow-mismatch", help="Accept an input made with another "
                                                "preset or other weights.")]
LayoutOpt = Annotated[str, typer.Option("--layout", help="Chunk layout of refined levels: seamless (neighbouring "
                                        "chunks share their boundary anchor) or reference (the release's).")]

DEFAULT_PRESET = "toy"  # the shipped toy model: runs anywhere; real videos need --preset tempomaster-14b


@dataclass
class Session:
    preset: "Preset"
    store: "ModelStore"
    progress: "Progress"


def sampler_overrides(overrides: list[str] | None, guidance_scale: float | None = None,
                      negative_prompt: str | None = None) -> list[str]:
    """``--set`` overrides with ``--guidance-scale`` and ``--negative-prompt`` added last, so those win."""
    out = list(overrides or [])
    if guidance_scale is not None:
        if not 1 <= guidance_scale < float("inf"):
            raise UsageError(f"--guidance-scale must be at least 1, got {guidance_scale:g}",
                             hint="1 turns guidance off; the presets use 4 to 8")
        out.append(f"sampler.guidance_scale={guidance_scale!r}")
    if negative_prompt is not None:
        # a JSON string is a YAML double-quoted scalar: taken as it is, whatever its colons, quotes or hashes
        out.append(f"sampler.negative_prompt={json.dumps(negative_prompt, ensure_ascii=False)}")
    return out


def draw_seed(seed: int | None, quiet: bool) -> int | None:
    """``--seed``: a negative one (``-1``, as in Wan's generate.py) is replaced by a random seed in [0, 2^31), the
    same on every rank under torchrun, and said on stderr (unless ``quiet``) so the run can be repeated."""
    import secrets

    from tempo_cli import distributed
    from tempo_cli.console import note

    if seed is None or seed >= 0:
        return seed
    distributed.init_from_env()
    drawn = distributed.from_main(secrets.randbelow(2**31))
    if distributed.is_main() and not quiet:
        note(f"--seed {seed}: drew seed {drawn} (pass --seed {drawn} to repeat this run)")
    return drawn


def open_session(preset: str | None, overrides: list[str] | None, weights: Path | None, device: str | None,
                 dtype: str | None, quiet: bool, fallback_preset: str | None = None, offload: bool = False,
                 notice: bool = True) -> Session:
    """Resolve the preset and where models will run. When the preset is not a real model, stderr says so as its
    weights are first used (unless ``notice`` is off: training, where the preset is a starting point, not a model to
    judge videos by)."""
    from tempo_cli import distributed
    from tempo_cli.console import RichProgress, note
    from tempo_cli.presets import load_preset, preset_notice
    from tempo_cli.runtime import ModelStore, resolve_device, resolve_dtype

    chosen = load_preset(preset or fallback_preset or DEFAULT_PRESET, overrides or [])
    distributed.init_from_env()  # under torchrun: join the group; each rank takes its share of every level
    main = distributed.is_main()
    message = preset_notice(chosen) if main and notice else None
    run_device = distributed.local_device() or resolve_device(device)
    store = ModelStore(chosen, run_device, resolve_dtype(dtype, run_device), weights, offload=offload,
                       announce=(lambda: note(message)) if message else None)  # once the command's checks passed
    return Session(chosen, store, RichProgress(quiet or not main))


@dataclass(frozen=True)
class SessionArgs:
    """The session options of a command, to open the session once its input has been read."""

    preset: str | None
    overrides: list[str] | None
    weights: Path | None
    device: str | None
    dtype: str | None
    quiet: bool
    offload: bool = False

    def open(self, fallback_preset: str | None = None) -> Session:
        return open_session(self.preset, self.overrides, self.weights, self.device, self.dtype, self.quiet,
                            fallback_preset=fallback_preset, offload=self.offload)


def write_latents(latent_file, target: str, force: bool) -> None:
    """Save a stage's result (on rank 0 only, under torchrun) and print its path."""
    from tempo_cli import distributed
    from tempo_cli.latents import save

    if distributed.is_main():
        emit_path(save(latent_file, target, force=force))


def emit_path(path: str) -> None:
    """Written paths go to stdout, one per line (nothing for '-': the data itself went there)."""
    if path != "-":
        typer.echo(path)
