"""``tempo continue``: multi-mask continuation. The last seconds of a video (a latent file of any level, or a
video file) become the leading conditioned frames of a new clip, generated coarse to fine like any other:
the context is an anchor at every level, and the new clip overlaps the old video by exactly the context, so
the joined result neither repeats nor skips a frame. A new ``--prompt`` per continuation is a prompt schedule.

The output holds the input's chunks followed by the new clip's, whose first ``context`` frames are the ones
dropped on joining.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from stages.refine import chunk_counts, open_parent, refine_levels
from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage

if TYPE_CHECKING:
    import torch

    from tempo_cli.latents import LatentFile
    from tempo_cli.options import Session


def context_anchors(context: "torch.Tensor", chain: list[int]) -> dict[int, dict[int, "torch.Tensor"]]:
    """Per frame interval of ``chain``: level position -> context frame, for a context ``[3, C, H, W]`` at the
    finest interval ``chain[-1]`` whose first frame is the new clip's position 0."""
    finest = chain[-1]
    return {s: {p: context[:, p * s // finest] for p in range((context.shape[1] - 1) * finest // s + 1)}
            for s in chain}


def segments_of(header) -> list[dict]:
    """The prompt schedule so far: one entry per generated segment of the joined video (``chunks``: how many of the
    header's chunks, in order, are the segment's; files written before tempo recorded it lack the key)."""
    first = {"start": 0, "frames": header.frames, "prompt": header.prompt, "negative_prompt": header.negative_prompt,
             "guidance_scale": header.guidance_scale, "seed": header.seed, "chunks": len(header.chunks)}
    return list(header.extra.get("segments") or [first])


def run(session: "Session", parent: "LatentFile", *, seconds: float = 10.0, context: float = 5.0,
        prompt: str | None = None, seed: int | None = None, layout: str = "seamless", chunks: str | None = None,
        steps: int | None = None, micro_batch: int | None = None) -> "LatentFile":
    """Continue ``parent`` by ``seconds``; returns the joined video's latent file (not yet written)."""
    from tempo_cli.latents import LatentFile, utc_now
    from tempo_cli.pipeline import (LevelSampling, chunk_records, decode_file, decode_level, denoise_level,
                                    encode_prompts, guided_anywhere, level_conditions, shape_steering)
    from tempo_cli.plan import make_plan

    preset, store, progress = session.preset, session.store, session.progress
    header = parent.header
    if seconds <= 0 or context <= 0:
        raise UsageError("--seconds and --context must be positive")
    if prompt is not None and not prompt.strip():
        raise UsageError("--prompt is empty")
    finest = header.frame_interval
    chain = [s for s in preset.video.frame_intervals if s >= finest]
    if chain[-1] != finest:
        raise UsageError(f"the input runs at {header.fps:g} fps, not a level of preset {preset.name}")
    ratio, fps0 = chain[0] // finest, preset.video.fps / chain[0]
    context_steps = min(round(context * fps0), (header.frames - 1) // ratio)  # in blueprint intervals
    if context_steps < 1:
        raise UsageError(f"the input has {header.frames} frames: too short to give a context",
                         hint=f"continuation needs at least {ratio + 1} frames at {header.fps:g} fps")
    context_frames = context_steps * ratio + 1
    offset = header.frames - context_frames  # where the new clip starts on the joined time axis
    blueprint_frames = 4 * math.ceil((context_steps + seconds * fps0) / 4) + 1
    segments = segments_of(header)
    run_seed = header.seed + len(segments) if seed is None else seed

    tail = decode_file(store, parent, progress, first=offset)  # [3, C, H, W]
    anchors = context_anchors(tail, chain)
    prompt = header.prompt if prompt is None else prompt
    guided = guided_anywhere(preset)
    if (prompt == header.prompt and preset.sampler.negative_prompt == header.negative_prompt
            and (parent.negative_embeds is not None or not guided)):
        embeds, negative = parent.prompt_embeds, parent.negative_embeds  # the input's own, as it was made
    else:
        embeds, negative = encode_prompts(store, prompt, preset.sampler.negative_prompt, guided, progress)

    height, width = header.height, header.width
    level = make_plan(blueprint_frames, (chain[0],), (1,), height=height, width=width,
                      base_fps=preset.video.fps).levels[0]
    settings = LevelSampling.for_level(preset, chain[0], steps)
    conditions = level_conditions(store.vae(), level, None, anchors[chain[0]], height, width)
    latents = denoise_level(store.dit(), level, conditions, embeds, negative, settings, run_seed,
                            micro_batch=micro_batch, progress=progress,
                            steer=shape_steering(store, settings, prompt, progress))
    if len(chain) > 1:
        coarse = decode_level(store.vae(), level, latents, progress)
        counts = chunk_counts(preset, chain, chunks, layout)
        levels, latents, settings = refine_levels(session, coarse, level, chain, counts, layout, embeds, negative,
                                                  run_seed, steps=steps, micro_batch=micro_batch, anchors_at=anchors,
                                                  prompt=prompt)
        level = levels[-1]
    new_records = [{**r, "start": r["start"] + offset} for r in chunk_records(level)]
    negative_prompt = preset.sampler.negative_prompt  # the input's own when its embeddings were kept
    segments.append({"start": offset, "frames": level.frames, "context_frames": context_frames, "prompt": prompt,
                     "negative_prompt": negative_prompt, "guidance_scale": settings.guidance_scale, "seed": run_seed,
                     "chunks": len(new_records)})
    child = dataclasses.replace(
        header, stage="continue", prompt=prompt, negative_prompt=negative_prompt, guidance=settings.guidance,
        guidance_scale=settings.guidance_scale, seed=run_seed, frames=offset + level.frames,
        chunks=list(header.chunks) + new_records, parent_sha256=parent.source_sha256,
        extra={**header.extra, "segments": segments}, created=utc_now())
    return LatentFile(child, list(parent.chunks) + list(latents), embeds, negative)


def command(
    source: Annotated[str, typer.Argument(help="Latent file (or '-' for stdin), or a video file.")],
    seconds: Annotated[float, typer.Option("--seconds", "-s", help="Seconds of new video.")] = 10.0,
    context: Annotated[str, typer.Option("--context", help="Seconds of the input the new clip is conditioned "
                                         "on, e.g. 5s.")] = "5s",
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt of the new clip (default: the "
                                                  "input's; needed for a video tempo did not write).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (default: the input's plus the number of "
                                                "segments so far; -1 draws one at random).")] = None,
    layout: opt.LayoutOpt = "seamless",
    chunks: Annotated[Optional[str], typer.Option("--chunks", help="Chunks per refined level.")] = None,
    steps: opt.StepsOpt = None,
    guidance_scale: opt.GuidanceOpt = None,
    negative_prompt: opt.NegativeOpt = None,
    output: opt.OutputOpt = None,
    force: opt.ForceOpt = False,
    allow_mismatch: opt.AllowMismatchOpt = False,
    preset: opt.PresetOpt = None,
    set_: opt.SetOpt = None,
    weights: opt.WeightsOpt = None,
    device: opt.DeviceOpt = None,
    dtype: opt.DtypeOpt = None,
    micro_batch: opt.MicroBatchOpt = None,
    offload: opt.OffloadOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Extend a video by multi-mask continuation; prints the joined latent file's path."""
    from tempo_cli.latents import check_writable

    target = output or default_output(source)
    check_writable(target, force=force)
    seed = opt.draw_seed(seed, quiet)
    session, parent = open_parent(source, prompt, seed, allow_mismatch, opt.SessionArgs(
        preset, opt.sampler_overrides(set_, guidance_scale, negative_prompt), weights, device, dtype, quiet,
        offload))
    child = run(session, parent, seconds=seconds, context=parse_seconds(context, "--context"), prompt=prompt,
                seed=seed, layout=layout, chunks=chunks, steps=steps, micro_batch=micro_batch)
    opt.write_latents(child, target, force)


def parse_seconds(text: str, option: str) -> float:
    """``5``, ``5s`` or ``5.5s`` -> seconds."""
    try:
        return float(text.strip().removesuffix("s"))
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected seconds, e.g. 5s") from None


def default_output(source: str) -> str:
    """``<input stem>-continued.safetensors`` beside the input, numbered rather than overwriting."""
    if source == "-":
        return "-"
    stem = Path(source).name.split(".")[0]
    candidate, n = Path(source).with_name(f"{stem}-continued.safetensors"), 1
    while candidate.exists():
        candidate, n = Path(source).with_name(f"{stem}-continued-{n}.safetensors"), n + 1
    return str(candidate)


STAGE = Stage("continue", "Extend a video by multi-mask continuation.", command, order=30)
