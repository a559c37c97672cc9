"""``tempo generate``: every stage in one process (blueprint -> refine -> encode), models loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages import blueprint, encode, refine
from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage


def command(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Video to write (.mp4, .webm or .gif).")] = Path(
        "out.mp4"),
    seconds: Annotated[Optional[float], typer.Option("--seconds", "-s", help="Length (default 5 s).")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Blueprint frames (4k+1).")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="First frame (image-to-video).")] = None,
    last_image: Annotated[Optional[Path], typer.Option("--last-image", help="Last frame.")] = None,
    keyframe: Annotated[Optional[list[str]], typer.Option("--keyframe", help="TIME=IMAGE anchor. Repeatable.")] = None,
    video: opt.VideoOpt = None,
    strength: opt.StrengthOpt = None,
    via: Annotated[Optional[str], typer.Option("--via", help="Frame rates of the levels, e.g. 6,12,24 or 6,24 "
                                               "(default: the preset's).")] = None,
    chunks: Annotated[Optional[str], typer.Option("--chunks", help="Chunks per refined level, e.g. 2,4.")] = None,
    layout: opt.LayoutOpt = "seamless",
    seed: opt.SeedOpt = 0,
    steps: opt.StepsOpt = None,
    guidance_scale: opt.GuidanceOpt = None,
    negative_prompt: opt.NegativeOpt = None,
    latents: Annotated[Optional[Path], typer.Option("--latents", help="Also keep the final latent file.")] = None,
    quality: Annotated[Optional[int], typer.Option("--quality", help="H.264 CRF (default 18).")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Also write a contact sheet (.png) of the "
                                                  "frames.")] = None,
    metadata: opt.MetadataOpt = True,
    force: opt.ForceOpt = False,
    preset: opt.PresetOpt = None,
    set_: opt.SetOpt = None,
    weights: opt.WeightsOpt = None,
    device: opt.DeviceOpt = None,
    dtype: opt.DtypeOpt = None,
    micro_batch: opt.MicroBatchOpt = None,
    offload: opt.OffloadOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Generate a video from a prompt, coarse to fine in time, and write it; prints the written paths."""
    from tempo_cli import distributed
    from tempo_cli.latents import check_writable

    for path in (output, latents):
        if path is not None and path.exists() and not force:
            raise UsageError(f"{path} exists", hint="pass --force to overwrite it")
    if latents is not None:
        check_writable(latents, force=force)
    encode.check_outputs(str(output), sheet, force)  # a bad suffix fails now, not after the whole generation
    blueprint.check_strength(video, strength)
    overrides = opt.sampler_overrides(set_, guidance_scale, negative_prompt)
    seed = opt.draw_seed(seed, quiet)
    session = opt.open_session(preset, overrides, weights, device, dtype, quiet, offload=offload)
    rates = session.preset.video
    chain = refine.parse_ints(via, "--via") or []
    start_fps = float(chain[0]) if chain else rates.fps / rates.frame_intervals[0]
    final_fps = float(chain[-1]) if chain else rates.fps / rates.frame_intervals[-1]
    result = blueprint.run(session, prompt, fps=start_fps, frames=frames, seconds=seconds, image=image,
                           last_image=last_image, keyframes=keyframe or (), seed=seed, steps=steps,
                           micro_batch=micro_batch, video=video, strength=strength)
    session.store.release("text_encoder")
    if final_fps != start_fps:
        result = refine.run(session, result, to_fps=final_fps, via=via, chunks=chunks, layout=layout, steps=steps,
                            micro_batch=micro_batch)
    session.store.release("dit")
    if latents is not None:
        opt.write_latents(result, str(latents), force)
    if not distributed.is_main():  # under torchrun, rank 0 decodes and writes
        return
    frames_out = encode.run(session, result)
    header = result.header
    for path in encode.write_outputs(frames_out, header if metadata else None, header.fps, str(output), sheet, quality,
                                     force):
        opt.emit_path(path)


STAGE = Stage("generate", "Prompt to video: blueprint, refine and encode in one process.", command, order=50)
