"""``tempo encode``: decode a latent file (any level) and write an H.264 mp4, a VP9 webm, a gif, or a contact sheet;
the mp4, webm and sheet carry the latent file's header (``tempo inspect`` reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tempo_cli import options as opt
from tempo_cli.errors import UsageError
from tempo_cli.plugins import Stage

if TYPE_CHECKING:
    import numpy as np

    from tempo_cli.latents import LatentFile
    from tempo_cli.options import Session


def run(session: "Session", latent_file: "LatentFile") -> "np.ndarray":
    """Decode every chunk, join them, and return the frames ``[T, H, W, 3]`` (uint8)."""
    from tempo_cli.pipeline import decode_file
    from tempo_cli.video import to_uint8_frames

    video = decode_file(session.store, latent_file, session.progress)
    session.store.release("vae")
    return to_uint8_frames(video)


def write_outputs(frames, header, fps: float, output: str | None, sheet: Path | None, quality: int | None,
                  force: bool) -> list[str]:
    """Write the video and/or the contact sheet, each tagged with ``header`` (the latent file's; None: untagged);
    returns the written paths."""
    from tempo_cli.latents import media_metadata
    from tempo_cli.video import contact_sheet, write_video

    metadata = None if header is None else media_metadata(header)
    written = []
    if output is not None:
        written.append(str(write_video(frames, output, fps, quality=quality, force=force, metadata=metadata)))
    if sheet is not None:
        written.append(str(contact_sheet(frames, sheet, force=force, metadata=metadata)))
    return written


def check_outputs(output: str | None, sheet: Path | None, force: bool) -> None:
    """Refuse an existing output (without ``force``) or an unwritable suffix before anything is decoded."""
    from tempo_cli.video import WRITE_SUFFIXES

    for path in (output, sheet):
        if path is not None and str(path) != "-" and Path(path).exists() and not force:
            raise UsageError(f"{path} exists", hint="pass --force to overwrite it")
    if output is not None and Path(output).suffix.lower() not in WRITE_SUFFIXES:
        raise UsageError(f"cannot write video {output}: unknown suffix {Path(output).suffix!r}",
                         hint=f"use one of {', '.join(WRITE_SUFFIXES)}")
    if sheet is not None and Path(sheet).suffix.lower() != ".png":
        raise UsageError(f"cannot write contact sheet {sheet}: it must be a .png file")


def command(
    source: Annotated[str, typer.Argument(help="Latent file of any level, or '-' for stdin.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Video to write: .mp4 (H.264), "
                                                  ".webm (VP9) or .gif (default: the input's name with .mp4).")] = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Playback frame rate (default: the level's).")] = None,
    quality: Annotated[Optional[int], typer.Option("--quality", help="H.264 CRF, 0-51, lower is better "
                                                   "(default 18).")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Also write a PNG contact sheet.")] = None,
    metadata: opt.MetadataOpt = True,
    force: opt.ForceOpt = False,
    allow_mismatch: opt.AllowMismatchOpt = False,
    preset: opt.PresetOpt = None,
    set_: opt.SetOpt = None,
    weights: opt.WeightsOpt = None,
    device: opt.DeviceOpt = None,
    dtype: opt.DtypeOpt = None,
    quiet: opt.QuietOpt = False,
) -> None:
    """Decode a latent file to video; prints the written paths."""
    from tempo_cli.latents import check_compatible, load

    if quality is not None and not 0 <= quality <= 51:
        raise UsageError(f"--quality must be a CRF from 0 to 51, got {quality}")
    if fps is not None and fps <= 0:
        raise UsageError(f"--fps must be positive, got {fps:g}")
    if output is None and sheet is None:
        if source == "-":
            raise UsageError("reading stdin: name the video with -o")
        output = str(Path(source).with_suffix(".mp4"))
    check_outputs(output, sheet, force)
    latent_file = load(source)
    session = opt.open_session(preset, set_, weights, device, dtype, quiet, fallback_preset=latent_file.header.preset)
    check_compatible(latent_file.header, session.preset.name, session.store.weights_id, allow_mismatch=allow_mismatch,
                     name=source)
    frames = run(session, latent_file)
    header = latent_file.header
    for path in write_outputs(frames, header if metadata else None, fps or header.fps, output, sheet, quality, force):
        opt.emit_path(path)


STAGE = Stage("encode", "Decode a latent file to mp4, gif or a contact sheet.", command, order=40)
