"""``tempo refine``: next-frame-rate prediction. Each finer level is generated in parallel chunks with the
coarser level's decoded frames as anchors, until the target frame rate. The input may also be a video
file, taken as the coarse level (generative frame-rate up-conversion)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Mapping, Optional, Sequence

import typer

from stages.blueprint import level_interval
from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage

if TYPE_CHECKING:
    import torch

    from tempo_cli.latents import LatentFile, LatentHeader
    from tempo_cli.options import Session
    from tempo_cli.plan import Level

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")


def parse_ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(float(v)) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated numbers, e.g. 6,12,24") from None


def level_chain(preset, start: int, target_fps: float, via: str | None) -> list[int]:
    """Frame intervals from the input's level (``start``) down to ``target_fps``'s, through ``via``."""
    from tempo_cli.plan import check_intervals, intervals_from_fps

    end = level_interval(preset, target_fps, "--to")
    if end >= start:
        raise UsageError(f"--to {target_fps:g} fps is not finer than the input's "
                         f"{preset.video.fps / start:g} fps", hint="refine goes from coarse to fine frame rates")
    if via is None:
        chain = [start] + [s for s in preset.video.frame_intervals if end < s < start] + [end]
    else:
        chain = list(intervals_from_fps(parse_ints(via, "--via") or [], preset.video.fps))
        chain = ([start] if not chain or chain[0] != start else []) + chain + ([end] if chain[-1:] != [end] else [])
    return list(check_intervals(chain))


def chunk_counts(preset, chain: Sequence[int], chunks: str | None, layout: str) -> list[int | None]:
    """Chunks of every refined level: ``--chunks`` (one per refined level, or one per level from the
    blueprint with a leading 1), else the preset's count for that frame rate, else the paper's default."""
    refined = chain[1:]
    if layout == "reference":
        if chunks is not None:
            raise UsageError("--chunks cannot be used with --layout reference (the release fixes them)")
        return [None] * len(refined)
    given = parse_ints(chunks, "--chunks")
    if given is not None:
        if len(given) == len(refined) + 1 and given[0] == 1:
            given = given[1:]
        if len(given) != len(refined):
            raise UsageError(f"--chunks needs {len(refined)} count(s), one per refined level, got {chunks!r}")
        return list(given)
    by_interval = dict(zip(preset.video.frame_intervals, preset.video.chunks))
    return [by_interval.get(s, chain[0] // s) for s in refined]


def refine_levels(session: "Session", coarse: "torch.Tensor", level: "Level", chain: Sequence[int],
                  counts: Sequence[int | None], layout: str, embeds, negative, seed: int, *,
                  steps: int | None = None, micro_batch: int | None = None,
                  anchors_at: Mapping[int, Mapping[int, "torch.Tensor"]] | None = None, prompt: str | None = None):
    """Refine ``level`` (decoded as ``coarse [3, N, H, W]``) through ``chain[1:]``.

    ``anchors_at`` adds anchors per frame interval (level position -> frame), e.g. continuation context;
    ``prompt`` (the text of ``embeds``) is what a level with classifier guidance guides towards.
    Returns ``(levels, latents, settings)`` of the last level, with every level generated in ``levels``.
    """
    from tempo_cli.pipeline import LevelSampling, decode_level, denoise_level, level_conditions, shape_steering
    from tempo_cli.plan import next_level

    preset, store, progress = session.preset, session.store, session.progress
    height, width = coarse.shape[-2:]
    levels, latents, settings = [level], None, None
    for interval, count in zip(chain[1:], counts):
        if latents is not None:  # the previous refined level becomes the anchors of this one
            coarse = decode_level(store.vae(), levels[-1], latents, progress)
        level = next_level(levels[-1], interval, count, layout)
        settings = LevelSampling.for_level(preset, interval, steps)
        extra = (anchors_at or {}).get(interval, {})
        conditions = level_conditions(store.vae(), level, coarse, extra, height, width)
        latents = denoise_level(store.dit(), level, conditions, embeds, negative, settings, seed,
                                micro_batch=micro_batch, progress=progress,
                                steer=shape_steering(store, settings, prompt, progress))
        levels.append(level)
    return levels, latents, settings


def level_record(header) -> dict:
    """What a child file remembers of a coarser level it was refined from."""
    return {"fps": header.fps, "frame_interval": header.frame_interval, "frames": header.frames,
            "layout": header.layout, "chunks": len(header.chunks), "steps": header.steps}


def run(session: "Session", parent: "LatentFile", *, to_fps: float, via: str | None = None,
        chunks: str | None = None, layout: str = "seamless", seed: int | None = None, steps: int | None = None,
        micro_batch: int | None = None) -> "LatentFile":
    """Refine a latent file to ``to_fps``; returns the finest level's latent file (not yet written)."""
    from tempo_cli.latents import LatentFile, utc_now
    from tempo_cli.pipeline import (LevelSampling, chunk_records, decode_file, encode_negative, guided_anywhere,
                                    level_from_header)

    header = parent.header
    chain = level_chain(session.preset, header.frame_interval, to_fps, via)
    counts = chunk_counts(session.preset, chain, chunks, layout)
    coarse = decode_file(session.store, parent, session.progress)
    run_seed = header.seed if seed is None else seed
    negative = parent.negative_embeds
    if negative is None and guided_anywhere(session.preset, chain[1:]):  # made unguided: its own negative prompt
        negative = encode_negative(session.store, header.negative_prompt, parent.prompt_embeds, session.progress)
    levels, latents, settings = refine_levels(session, coarse, level_from_header(header), chain, counts, layout,
                                              parent.prompt_embeds, negative, run_seed, steps=steps,
                                              micro_batch=micro_batch, prompt=header.prompt)
    history = list(header.levels) + [level_record(header)]
    for level in levels[1:-1]:  # each intermediate level with its own steps, not the final level's
        level_steps = LevelSampling.for_level(session.preset, level.interval, steps).steps
        history.append({"fps": session.preset.video.fps / level.interval, "frame_interval": level.interval,
                        "frames": level.frames, "layout": layout, "chunks": len(level.chunks), "steps": level_steps})
    final = levels[-1]
    child = dataclasses.replace(
        header, stage="refine", seed=run_seed, steps=settings.steps, shift=settings.shift, guidance=settings.guidance,
        guidance_scale=settings.guidance_scale,
        fps=session.preset.video.fps / final.interval, frame_interval=final.interval, frames=final.frames,
        layout=layout, chunks=chunk_records(final), levels=history, parent_sha256=parent.source_sha256,
        created=utc_now())
    return LatentFile(child, latents, parent.prompt_embeds, negative)


def video_as_parent(session: "Session", path: Path, prompt: str | None, seed: int) -> "LatentFile":
    """A video file taken as the coarse level: encoded into a latent file of one chunk, with the prompt."""
    from tempo_cli.latents import LatentFile, LatentHeader
    from tempo_cli.pipeline import LevelSampling, chunk_records, encode_prompts, guided_anywhere
    from tempo_cli.plan import make_plan
    from tempo_cli.presets import resolved_dict
    from tempo_cli.video import from_uint8_frames, read_video, resize_frames

    preset, store, progress = session.preset, session.store, session.progress
    if not prompt or not prompt.strip():
        raise UsageError("refining a video needs --prompt describing it",
                         hint="a video tempo wrote (.mp4, .webm) keeps its prompt; this one does not")
    frames, fps = read_video(path)
    interval = level_interval(preset, round(fps, 3), f"the video's frame rate ({fps:g} fps),")
    count = (len(frames) - 1) // 4 * 4 + 1
    if count < 5:
        raise UsageError(f"{path} has {len(frames)} frames; refining needs at least 5")
    if count != len(frames):
        progress.log(f"using the first {count} of the video's {len(frames)} frames (4k+1)")
    height, width = preset.video.height, preset.video.width
    video = from_uint8_frames(resize_frames(frames[:count], height, width))  # [3, T, H, W]
    level = make_plan(count, (interval,), (1,), height=height, width=width, base_fps=preset.video.fps).levels[0]
    settings = LevelSampling.for_level(preset, interval)
    embeds, negative = encode_prompts(store, prompt, preset.sampler.negative_prompt, guided_anywhere(preset),
                                      progress)
    vae = store.vae()
    import torch

    with torch.inference_mode():  # the VAE moves one 4-frame group at a time to its device
        latents = vae.encode(video[None])[0].float().cpu()
    header = LatentHeader(
        stage="video", preset=preset.name, preset_config=resolved_dict(preset), weights_id=store.weights_id,
        prompt=prompt, negative_prompt=preset.sampler.negative_prompt, seed=seed, steps=0, shift=settings.shift,
        guidance=settings.guidance, guidance_scale=settings.guidance_scale, fps=preset.video.fps / interval,
        frame_interval=interval, frames=count, height=height, width=width, layout="video",
        chunks=chunk_records(level), extra={"source_video": str(path)})
    return LatentFile(header, [latents], embeds, negative)


def command(
    source: Annotated[str, typer.Argument(help="Latent file (or '-' for stdin), or a video file.")],
    to: Annotated[float, typer.Option("--to", help="Target frame rate (a level of the preset).")] = 24,
    via: Annotated[Optional[str], typer.Option("--via", help="Frame rates to pass through, e.g. 6,12,24 or "
                                               "6,24 (default: every preset level in between).")] = None,
    chunks: Annotated[Optional[str], typer.Option("--chunks", help="Chunks per refined level, e.g. 2,4 "
                                                  "(default: the preset's).")] = None,
    layout: opt.LayoutOpt = "seamless",
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt (default: the input's; "
                                                  "needed for a video tempo did not write).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (default: the input's; -1 draws "
                                                "one at random).")] = None,
    steps: opt.StepsOpt = None,
    guidance_scale: opt.GuidanceOpt = None,
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
    """Refine to a higher frame rate; prints the new latent file's path."""
    from tempo_cli.latents import check_writable

    if layout not in ("seamless", "reference"):
        raise UsageError(f"--layout {layout!r}: choose seamless or reference")
    target = output or default_output(source, to)
    check_writable(target, force=force)
    seed = opt.draw_seed(seed, quiet)
    session, parent = open_parent(source, prompt, seed, allow_mismatch, opt.SessionArgs(
        preset, opt.sampler_overrides(set_, guidance_scale), weights, device, dtype, quiet, offload))
    child = run(session, parent, to_fps=to, via=via, chunks=chunks, layout=layout, seed=seed, steps=steps,
                micro_batch=micro_batch)
    opt.write_latents(child, target, force)


def open_parent(source: str, prompt: str | None, seed: int | None, allow_mismatch: bool, args: "opt.SessionArgs"):
    """The session and the input of refine/continue: a latent file (checked against the preset and weights;
    its preset is the default) or a video file (encoded as the coarse level, with ``prompt``). A video tempo wrote
    keeps its latent file's header, whose prompt, seed and preset are then the defaults."""
    from tempo_cli.latents import check_compatible, load

    is_video = source != "-" and Path(source).suffix.lower() in VIDEO_SUFFIXES
    parent = None if is_video else load(source)
    if parent is None:
        made = header_of_video(Path(source))
        session = args.open(fallback_preset=made and made.preset)
        if made is not None:
            prompt, seed = prompt or made.prompt, made.seed if seed is None else seed
        return session, video_as_parent(session, Path(source), prompt, seed or 0)
    session = args.open(fallback_preset=parent.header.preset)
    check_compatible(parent.header, session.preset.name, session.store.weights_id, allow_mismatch=allow_mismatch,
                     name=source)
    return session, parent


def header_of_video(path: Path) -> "LatentHeader | None":
    """The header a video tempo wrote keeps (None for any other video; a missing or unreadable file fails later,
    where it is read)."""
    from tempo_cli.errors import TempoError
    from tempo_cli.latents import header_of_media

    try:
        return header_of_media(path)
    except TempoError:
        return None


def default_output(source: str, fps: float) -> str:
    """``<input stem>-<fps>fps.safetensors`` beside the input ('-' when reading stdin: write stdout)."""
    if source == "-":
        return "-"
    stem = Path(source).name.split(".")[0]
    for suffix in ("fps",):
        stem = stem.rsplit("-", 1)[0] if stem.endswith(suffix) else stem
    candidate, n = Path(source).with_name(f"{stem}-{fps:g}fps.safetensors"), 1
    while candidate.exists():
        candidate, n = Path(source).with_name(f"{stem}-{fps:g}fps-{n}.safetensors"), n + 1
    return str(candidate)


STAGE = Stage("refine", "Next-frame-rate prediction: refine to a higher frame rate.", command, order=20)
