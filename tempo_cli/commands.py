"""The informational commands: ``plan``, ``inspect``, ``stages`` and ``presets``. Their report is their
data, so it goes to stdout (a rich tree or table, or JSON with ``--json``)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from tempo_cli import options as opt

stdout = Console(highlight=False)


def plan(
    seconds: Annotated[Optional[float], typer.Option("--seconds", "-s", help="Length (default 5 s).")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Blueprint frames (4k+1).")] = None,
    via: Annotated[Optional[str], typer.Option("--via", help="Frame rates of the levels, e.g. 6,12,24 or 6,24 "
                                               "(default: the preset's).")] = None,
    chunks: Annotated[Optional[str], typer.Option("--chunks", help="Chunks per level, e.g. 1,2,4.")] = None,
    layout: opt.LayoutOpt = "seamless",
    preset: opt.PresetOpt = None,
    set_: opt.SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Show the levels, chunks, RoPE indices and estimated cost of a generation (nothing is run)."""
    from stages.blueprint import frame_count
    from stages.refine import parse_ints
    from tempo_cli.pipeline import LevelSampling
    from tempo_cli.plan import estimate_cost, intervals_from_fps, make_plan, plan_to_dict
    from tempo_cli.presets import load_preset

    chosen = load_preset(preset or opt.DEFAULT_PRESET, set_ or [])
    video = chosen.video
    intervals = video.frame_intervals if via is None else intervals_from_fps(parse_ints(via, "--via"), video.fps)
    counts = parse_ints(chunks, "--chunks")
    if counts is None and layout == "seamless" and intervals == video.frame_intervals:
        counts = list(video.chunks)
    count = frame_count(video.fps / intervals[0], frames, seconds, default_seconds=5.0)
    the_plan = make_plan(count, intervals, counts, layout, video.height, video.width, video.fps)
    settings = [LevelSampling.for_level(chosen, s) for s in intervals]
    cost = estimate_cost(the_plan, chosen.dit, [s.steps for s in settings],
                         guidance=chosen.sampler.guidance != "none", text_len=chosen.text_encoder.text_len,
                         spatial_factor=chosen.vae.spatial_factor, stagger=[s.stagger for s in settings],
                         lag=[s.lag for s in settings], waiting_frames=chosen.sampler.waiting_frames)
    data = plan_to_dict(the_plan, cost)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    tree = Tree(f"[bold]{chosen.name}[/]: {data['final_frames']} frames at {video.fps} fps "
                f"({data['duration_s']:.2f} s), {video.width}x{video.height}, layout {layout}")
    for level, level_cost in zip(data["levels"], cost.levels):
        node = tree.add(f"level {level['index']}: {level['fps']:g} fps (interval {level['interval']}), "
                        f"{level['frames']} frames in {len(level['chunks'])} chunk(s); "
                        f"{level_cost.flops / 1e15:.2f} PFLOPs, {level_cost.steps} steps"
                        + (f" (up to {level_cost.lagged_steps} as later latent frames lag)"
                           if level_cost.lagged_steps else ""))
        for chunk in level["chunks"]:
            real = [p for p in chunk["positions"] if p is not None]
            node.add(f"chunk {chunk['index']}: frames {real[0]}..{real[-1]} ({chunk['frames']} slots, "
                     f"{chunk['latent_frames']} latent, {chunk['tokens']} tokens), RoPE {chunk['rope'][0]}"
                     f"..{chunk['rope'][-1]}")
    tree.add(f"total {cost.flops / 1e15:.2f} PFLOPs; one-shot generation of the same frames "
             f"{cost.one_shot.flops / 1e15:.2f} PFLOPs ({cost.speedup:.2f}x)")
    stdout.print(tree)


def inspect(
    source: Annotated[str, typer.Argument(help="Latent file, or '-' for stdin; or a video (.mp4, .webm) or "
                                          "contact sheet (.png) tempo wrote, which keeps its latent file's header.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the header as JSON.")] = False,
) -> None:
    """Show a latent file's header (its tensors are not loaded), or the one a video tempo wrote keeps."""
    from pathlib import Path

    from tempo_cli.latents import format_header, header_of_media, header_summary, read_header
    from tempo_cli.video import is_video

    media = source != "-" and (is_video(source) or Path(source).suffix.lower() == ".png")
    header = header_of_media(source) if media else read_header(source)
    if as_json:
        typer.echo(json.dumps(header_summary(header), indent=2, ensure_ascii=False))
    else:
        typer.echo(format_header(header))


def stages() -> None:
    """List the loaded stage plugins."""
    from tempo_cli.plugins import load_stages

    table = Table("stage", "summary", "from")
    for loaded in load_stages():
        table.add_row(loaded.stage.name, loaded.stage.summary, loaded.source)
    stdout.print(table)


def presets() -> None:
    """List the presets and where they were found."""
    from tempo_cli.presets import list_presets, load_preset, preset_path

    table = Table("preset", "description", "file")
    for name in list_presets():
        table.add_row(name, load_preset(name).description, str(preset_path(name)))
    stdout.print(table)
