"""``tempo blueprint``: the coarsest level of the whole clip, generated in one chunk with bidirectional
attention, optionally anchored on a first image, a last image and keyframes at any time, or redrawn from a
video (video-to-video: the video's frames noised to ``--strength`` and denoised with the prompt)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Sequence

import typer

from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage

if TYPE_CHECKING:
    import torch

    from tempo_cli.latents import LatentFile
    from tempo_cli.options import Session

KEYFRAME = re.compile(r"^\s*(?P<time>\d+(?:\.\d+)?)\s*(?P<unit>s|f)?\s*=(?P<path>.+)$")


def level_interval(preset, fps: float, option: str = "--fps") -> int:
    """The frame interval of the preset level running at ``fps``; a usage error names the levels."""
    levels = {preset.video.fps / s: s for s in preset.video.frame_intervals}
    for rate, interval in levels.items():
        if math.isclose(rate, fps):
            return interval
    names = ", ".join(f"{r:g}" for r in levels)
    raise UsageError(f"{option} {fps:g} is not a level of preset {preset.name}", hint=f"choose one of: {names}")


def frame_count(fps: float, frames: int | None, seconds: float | None, default_seconds: float) -> int:
    """``--frames`` (must be 4k+1) or ``--seconds`` (rounded up to the next 4k+1 frames at ``fps``)."""
    from tempo_cli.plan import check_frames

    if frames is not None and seconds is not None:
        raise UsageError("give --frames or --seconds, not both")
    if frames is not None:
        check_frames(frames, "--frames")
        return frames
    seconds = default_seconds if seconds is None else seconds
    if seconds <= 0:
        raise UsageError(f"--seconds must be positive, got {seconds:g}")
    return 4 * max(1, math.ceil(seconds * fps / 4 - 1e-9)) + 1


def parse_keyframes(specs: Sequence[str], fps: float, frames: int) -> dict[int, Path]:
    """``3.5s=img.png`` (seconds) or ``12f=img.png`` (frame of this level) -> position -> path."""
    out: dict[int, Path] = {}
    for spec in specs:
        match = KEYFRAME.match(spec)
        if not match:
            raise UsageError(f"--keyframe {spec!r}: expected TIME=IMAGE, e.g. 3.5s=key.png or 12f=key.png")
        value = float(match["time"])
        position = int(value) if match["unit"] == "f" else round(value * fps)
        if not 0 <= position < frames:
            raise UsageError(f"--keyframe {spec!r} falls outside the {frames} frames "
                             f"({(frames - 1) / fps:g} s at {fps:g} fps)")
        out[position] = Path(match["path"].strip())
    return out


def load_anchors(paths: dict[int, Path], height: int, width: int) -> dict:
    """position -> frame ``[3, H, W]`` in [-1, 1], each image resized to cover the frame and centre-cropped."""
    from tempo_cli.video import from_uint8_frames, read_image

    return {p: from_uint8_frames(read_image(path, (height, width))[None])[:, 0] for p, path in paths.items()}


def video_frames(path: Path, fps: float, frames: int | None, seconds: float | None, height: int,
                 width: int) -> "torch.Tensor":
    """The video at ``path`` at ``fps`` and the preset's size, as ``[3, T, H, W]`` in [-1, 1]: ``--frames`` or
    ``--seconds`` of it from its start, or by default the longest 4k+1 frames it covers."""
    from tempo_cli.video import from_uint8_frames, sample_video

    wanted = None if frames is None and seconds is None else frame_count(fps, frames, seconds, 5.0)
    clip, rate = sample_video(path, fps, (height, width), max_frames=wanted)
    count = wanted or 4 * ((len(clip) - 1) // 4) + 1
    if len(clip) < max(count, 5):
        covered = f"{len(clip)} frame(s) at {fps:g} fps"
        raise UsageError(f"--video {path} gives {covered}; the blueprint needs {max(count, 5)}",
                         hint="pass a shorter --seconds or --frames, or a longer video")
    return from_uint8_frames(clip[:count])


def start_latents(vae, level, video: "torch.Tensor") -> list["torch.Tensor"]:
    """Per chunk of ``level``, the VAE latents ``[z, F, h, w]`` of the frames of ``video [3, T, H, W]`` at its
    positions (zeros at padding slots), to denoise from."""
    import torch

    out = []
    for chunk in level.chunks:
        clip = torch.stack([video[:, p] if p is not None else torch.zeros_like(video[:, 0])
                            for p in chunk.positions], dim=1)  # [3, F, H, W], in CPU memory
        with torch.inference_mode():  # the VAE moves one 4-frame group at a time to its device
            out.append(vae.encode(clip[None])[0].float())
    return out


def run(session: "Session", prompt: str, *, fps: float, frames: int | None = None, seconds: float | None = None,
        image: Path | None = None, last_image: Path | None = None, keyframes: Sequence[str] = (), seed: int = 0,
        steps: int | None = None, micro_batch: int | None = None, video: Path | None = None,
        strength: float | None = None) -> "LatentFile":
    """Generate the blueprint level; returns its latent file (not yet written). With ``video`` the level starts
    from that video's latents noised to ``strength`` (default 0.8) instead of from pure noise."""
    from tempo_cli.latents import LatentFile, LatentHeader
    from tempo_cli.pipeline import (LevelSampling, chunk_records, denoise_level, encode_prompts, guided_anywhere,
                                    level_conditions, shape_steering)
    from tempo_cli.plan import make_plan
    from tempo_cli.presets import resolved_dict

    preset, store, progress = session.preset, session.store, session.progress
    if not prompt.strip():
        raise UsageError("the prompt is empty", hint='describe the video, e.g. tempo blueprint "a dog in snow"')
    interval = level_interval(preset, fps)
    height, width = preset.video.height, preset.video.width
    strength = check_strength(video, strength)
    source = video_frames(video, fps, frames, seconds, height, width) if video else None
    count = source.shape[1] if source is not None else frame_count(fps, frames, seconds, default_seconds=5.0)
    paths = parse_keyframes(keyframes, fps, count)
    paths.update({0: image} if image else {})
    paths.update({count - 1: last_image} if last_image else {})
    anchors = load_anchors(paths, height, width)

    level = make_plan(count, (interval,), (1,), height=height, width=width, base_fps=preset.video.fps).levels[0]
    settings = LevelSampling.for_level(preset, interval, steps)
    weights_id = store.weights_id
    embeds, negative = encode_prompts(store, prompt, preset.sampler.negative_prompt, guided_anywhere(preset),
                                      progress)
    conditions = level_conditions(store.vae(), level, None, anchors, height, width)
    start = start_latents(store.vae(), level, source) if source is not None else None
    latents = denoise_level(store.dit(), level, conditions, embeds, negative, settings, seed,
                            micro_batch=micro_batch, progress=progress, start=start, strength=strength,
                            steer=shape_steering(store, settings, prompt, progress))
    redrawn = {"video": str(video), "strength": strength} if video else {}
    header = LatentHeader(
        stage="blueprint", preset=preset.name, preset_config=resolved_dict(preset), weights_id=weights_id,
        prompt=prompt, negative_prompt=preset.sampler.negative_prompt, seed=seed, steps=settings.steps,
        shift=settings.shift, guidance=settings.guidance, guidance_scale=settings.guidance_scale,
        fps=preset.video.fps / interval, frame_interval=interval, frames=count, height=height, width=width,
        layout="blueprint", chunks=chunk_records(level),
        extra={"anchors": {str(p): str(path) for p, path in sorted(paths.items())}, **redrawn})
    return LatentFile(header, latents, embeds, negative)


def check_strength(video: Path | None, strength: float | None) -> float:
    """``--strength``: only with ``--video``, in (0, 1]; 0.8 by default (diffusers' video-to-video default)."""
    if video is None:
        if strength is not None:
            raise UsageError("--strength needs --video: it is how far the video's frames are noised")
        return 1.0
    strength = 0.8 if strength is None else strength
    if not 0 < strength <= 1:
        raise UsageError(f"--strength must be in (0, 1], got {strength:g}",
                         hint="lower keeps more of the video; 1 starts from pure noise")
    return strength


def command(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the blueprint: a level of the preset.")] = 6,
    seconds: Annotated[Optional[float], typer.Option("--seconds", "-s", help="Length (default 5 s).")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Frame count at --fps (4k+1).")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="First frame (image-to-video).")] = None,
    last_image: Annotated[Optional[Path], typer.Option("--last-image", help="Last frame.")] = None,
    keyframe: Annotated[Optional[list[str]], typer.Option("--keyframe", help="TIME=IMAGE anchor, e.g. "
                                                          "3.5s=key.png or 12f=key.png. Repeatable.")] = None,
    video: opt.VideoOpt = None,
    strength: opt.StrengthOpt = None,
    seed: opt.SeedOpt = 0,
    steps: opt.StepsOpt = None,
    guidance_scale: opt.GuidanceOpt = None,
    negative_prompt: opt.NegativeOpt = None,
    output: opt.OutputOpt = None,
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
    """Generate the low-frame-rate blueprint of the whole clip; prints the latent file's path."""
    from tempo_cli.latents import check_writable

    target = output or default_output(prompt, fps)
    check_writable(target, force=force)
    check_strength(video, strength)
    overrides = opt.sampler_overrides(set_, guidance_scale, negative_prompt)
    seed = opt.draw_seed(seed, quiet)
    session = opt.open_session(preset, overrides, weights, device, dtype, quiet, offload=offload)
    latent_file = run(session, prompt, fps=fps, frames=frames, seconds=seconds, image=image, last_image=last_image,
                      keyframes=keyframe or (), seed=seed, steps=steps, micro_batch=micro_batch, video=video,
                      strength=strength)
    opt.write_latents(latent_file, target, force)


def default_output(prompt: str, fps: float) -> str:
    """``<first words of the prompt>-<fps>fps.safetensors``, numbered rather than overwriting."""
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:6]) or "video"
    candidate, n = Path(f"{slug}-{fps:g}fps.safetensors"), 1
    while candidate.exists():
        candidate, n = Path(f"{slug}-{fps:g}fps-{n}.safetensors"), n + 1
    return str(candidate)


STAGE = Stage("blueprint", "The low-frame-rate blueprint of the whole clip.", command, order=10)
