"""The latent file: one generated level's latents plus everything needed to continue from it.

A latent file is a safetensors file. Its string metadata holds ``format`` (``tempo-latents``),
``format_version`` and ``tempo``: the :class:`LatentHeader` as JSON. Tensors: ``chunk.{i}`` (each chunk's
latents ``[C, F, H, W]``, chunks are VAE-encoded separately), ``prompt_embeds`` ``[L, D]``,
``negative_embeds`` ``[L, D]`` (optional) and ``extra.{name}`` (e.g. coarser levels' latents); dtypes are
kept (bf16 included). A ``.pt`` file holds the same as a ``torch.save``d dict with the header JSON under
``tempo_header``; it is read with ``weights_only=True``, and recognised by content, not by suffix.

``-`` as a path is stdin or stdout (always safetensors). Writes are atomic (temp file in the same folder,
fsync, ``os.replace``); an existing file is only replaced with ``force``, else :class:`UsageError` (exit 2:
the command line must change; :func:`check_writable` lets a stage fail before generating anything).
Reading checks the format name, refuses newer format versions, checks the types of known header fields
and ignores unknown ones (a same-version file with added fields still reads); a bad file raises only
:class:`LatentFileError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tempo_cli import __version__
from tempo_cli.errors import LatentFileError, UsageError

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "tempo-latents"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt",)
CHUNK_KEYS = ("start", "frames", "latent_frames", "rope_start")
_MAX_HEADER = 100_000_000  # safetensors' own limit on its JSON header
_NOT_TEMPO_HINT = "give a file written by a tempo stage"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class LatentHeader:
    """What a latent file says about itself; JSON-able. ``chunks``: one dict per chunk with at least
    ``start`` (first frame on this level's axis), ``frames``, ``latent_frames`` and ``rope_start``."""

    stage: str
    preset: str
    preset_config: dict
    weights_id: str
    prompt: str
    seed: int
    steps: int
    shift: float
    guidance: str
    guidance_scale: float
    fps: float
    frame_interval: int
    frames: int
    height: int
    width: int
    layout: str
    chunks: list[dict]
    negative_prompt: str = ""
    parent_sha256: str | None = None
    levels: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    tempo_version: str = __version__
    created: str = field(default_factory=utc_now)


@dataclass
class LatentFile:
    """A header and its tensors. ``source_sha256``: the sha256 of the bytes it was loaded from (for the
    child's ``parent_sha256``, also when read from stdin); None when built in memory."""

    header: LatentHeader
    chunks: list[torch.Tensor]  # each [C, F, H, W]
    prompt_embeds: torch.Tensor  # [L, D]
    negative_embeds: torch.Tensor | None = None  # [L, D]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source_sha256: str | None = None

    def __post_init__(self) -> None:
        if problem := _tensor_problem(self.header, self.chunks, self.prompt_embeds, self.negative_embeds):
            raise ValueError(problem)


def _tensor_problem(header: LatentHeader, chunks: list, prompt: Any, negative: Any) -> str | None:
    if len(chunks) != len(header.chunks) or not chunks:
        return f"{len(chunks)} chunk tensors but the header lists {len(header.chunks)} chunks"
    if absent := [f"chunk.{i}" for i, t in enumerate(chunks) if t is None] + ["prompt_embeds"] * (prompt is None):
        return f"the tensors {', '.join(absent)} are missing"
    for i, (t, info) in enumerate(zip(chunks, header.chunks)):
        if t.ndim != 4 or t.shape[1] != info.get("latent_frames"):
            return f"chunk {i} has shape {list(t.shape)}, expected [C, {info.get('latent_frames')}, H, W]"
    for name, t in (("prompt_embeds", prompt), ("negative_embeds", negative)):
        if t is not None and t.ndim != 2:
            return f"{name} has shape {list(t.shape)}, expected [L, D]"
    return None


# ---- writing ----------------------------------------------------------------------------------------------

def check_writable(path: str | Path, *, force: bool = False, stream: BinaryIO | None = None) -> None:
    """Raise :class:`UsageError` unless ``path`` can be written: call it before hours of generation."""
    if str(path) == "-":
        out = stream if stream is not None else sys.stdout.buffer
        if getattr(out, "isatty", lambda: False)():
            raise UsageError("refusing to write binary latents to a terminal",
                             hint="redirect stdout to a file or pipe it into another tempo command")
        return
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")


def _tensors(lf: LatentFile) -> dict[str, torch.Tensor]:
    named = {f"chunk.{i}": t for i, t in enumerate(lf.chunks)}
    named["prompt_embeds"] = lf.prompt_embeds
    if lf.negative_embeds is not None:
        named["negative_embeds"] = lf.negative_embeds
    named.update({f"extra.{k}": t for k, t in lf.extra_tensors.items()})
    # safetensors wants contiguous CPU tensors that share no storage: clone once.
    return {k: t.detach().to("cpu").contiguous().clone() for k, t in named.items()}


def save(lf: LatentFile, path: str | Path, *, force: bool = False, stream: BinaryIO | None = None) -> str:
    """Write ``lf`` to ``path`` (``-``: ``stream``, default stdout) atomically; return the path written."""
    from safetensors.torch import save as st_save

    check_writable(path, force=force, stream=stream)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "tempo": header_text(lf.header)}
    tensors = _tensors(lf)
    if str(path) == "-":
        out = stream if stream is not None else sys.stdout.buffer
        out.write(st_save(tensors, metadata=meta))
        out.flush()
        return "-"
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a latent file is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix in PICKLE_SUFFIXES:
                import torch

                torch.save({"tempo_header": meta["tempo"], **tensors}, f)
            else:
                f.write(st_save(tensors, metadata=meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return str(path)


def header_text(header: LatentHeader) -> str:
    """The header as the JSON text a latent file keeps, and a video or contact sheet decoded from it as its
    ``comment`` (``header_of_media`` reads it back)."""
    return json.dumps({**asdict(header), "format": FORMAT_NAME, "format_version": FORMAT_VERSION},
                      ensure_ascii=False)


def media_metadata(header: LatentHeader) -> dict[str, str]:
    """The tags a video or contact sheet decoded from a latent file carries: its prompt as the title and the whole
    header as the comment, so the file alone tells how it was made (``tempo inspect demo.mp4``)."""
    return {"title": header.prompt, "comment": header_text(header)}


def header_of_media(path: str | Path) -> LatentHeader:
    """The header of the latent file a video or contact sheet was decoded from, out of its comment."""
    from tempo_cli.video import read_metadata

    comment = read_metadata(path).get("comment")
    if not comment or not comment.lstrip().startswith("{"):
        raise LatentFileError(f"{path} is not a tempo latent file, nor a video or contact sheet tempo wrote (it "
                              f"holds no tempo header)", hint=f"{_NOT_TEMPO_HINT} (its .mp4, .webm and .png files "
                                                               f"keep their header; a .gif has no room for it)")
    return _parse_header(comment, str(path))


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); Windows cannot open folders and does not need it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- reading ----------------------------------------------------------------------------------------------

def _open(path: str | Path, stream: BinaryIO | None) -> tuple[str, BinaryIO, int]:
    """(name for messages, readable binary file, size). ``-`` reads all of ``stream`` (default stdin)."""
    if str(path) == "-":
        data = (stream if stream is not None else sys.stdin.buffer).read()
        return "<stdin>", io.BytesIO(data), len(data)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise LatentFileError(f"latent file not found: {path}") from None
    except OSError as exc:
        raise LatentFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return str(path), f, os.fstat(f.fileno()).st_size


def _safetensors_metadata(f: BinaryIO, size: int, name: str) -> dict:
    """The ``__metadata__`` of a safetensors file, checking that its tensor data is all there."""
    n = int.from_bytes(f.read(8), "little")
    if n > _MAX_HEADER:
        raise LatentFileError(f"{name} is not a tempo latent file", hint=_NOT_TEMPO_HINT)
    if 8 + n > size:
        raise LatentFileError(f"{name} is truncated: its header needs {8 + n} bytes, the file has {size}")
    try:
        header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise LatentFileError(f"{name} is not a tempo latent file (bad header)", hint=_NOT_TEMPO_HINT) from None
    if 8 + n + end > size:
        raise LatentFileError(f"{name} is truncated: its tensors need {8 + n + end} bytes, the file has {size}")
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def _torch_load(f: BinaryIO | str, name: str, map_location: Any, mmap: bool) -> dict:
    import torch

    try:
        obj = torch.load(f, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # a damaged zip raises RuntimeError, a bad pickle UnpicklingError, ...
        first = (str(exc).splitlines() or [""])[0]
        raise LatentFileError(f"{name} is truncated or corrupt ({type(exc).__name__}: {first})",
                              hint="write it again") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("tempo_header"), str):
        raise LatentFileError(f"{name} is not a tempo latent file (no tempo header)", hint=_NOT_TEMPO_HINT)
    return obj


def _check_format(fmt: Any, version: Any, name: str) -> None:
    if fmt != FORMAT_NAME:
        raise LatentFileError(f"{name} is not a tempo latent file (format {fmt!r})", hint=_NOT_TEMPO_HINT)
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise LatentFileError(f"{name} has an unreadable format version {version!r}") from None
    if version > FORMAT_VERSION:
        raise LatentFileError(f"{name} was made by a newer tempo (format version {version}; this tempo reads "
                              f"up to {FORMAT_VERSION})", hint="upgrade tempo: pip install -U tempo-cli")


def _allowed(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType):
        return tuple(typing.get_origin(a) or a for a in typing.get_args(hint))
    return (typing.get_origin(hint) or hint,)


def _parse_header(header_json: str, name: str) -> LatentHeader:
    try:
        data = json.loads(header_json)
    except ValueError:
        raise LatentFileError(f"{name} has an unreadable tempo header (not JSON)") from None
    if not isinstance(data, dict):
        raise LatentFileError(f"{name} has an unreadable tempo header (not a JSON object)")
    _check_format(data.get("format"), data.get("format_version"), name)
    hints = typing.get_type_hints(LatentHeader)
    known = [f for f in fields(LatentHeader) if f.name in data]
    if missing := [f.name for f in fields(LatentHeader) if f.name not in data]:
        raise LatentFileError(f"{name}: the tempo header lacks {', '.join(missing)}", hint="write it again")
    values = {}
    for f in known:
        value, allowed = data[f.name], _allowed(hints[f.name])
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise LatentFileError(f"{name}: header field {f.name} is {value!r}, expected {want}")
        values[f.name] = value
    for i, chunk in enumerate(values["chunks"]):
        if not isinstance(chunk, dict) or not all(type(chunk.get(k)) is int for k in CHUNK_KEYS):
            raise LatentFileError(f"{name}: header chunk {i} is {chunk!r}, "
                                  f"expected integers {', '.join(CHUNK_KEYS)}")
    return LatentHeader(**values)


def _header(f: BinaryIO, size: int, name: str, map_location: Any = "cpu") -> tuple[LatentHeader, str, dict | None]:
    """(header, kind, the torch.load'ed dict for pickles). ``f`` is at its start."""
    head = f.read(10)
    f.seek(0)
    if head[8:10] == b'{"':  # u64 header length, then the JSON header
        meta = _safetensors_metadata(f, size, name)
        _check_format(meta.get("format"), meta.get("format_version"), name)
        return _parse_header(meta.get("tempo", ""), name), "safetensors", None
    if head[:4] == b"PK\x03\x04":  # torch.save's zip format
        source = f.name if isinstance(getattr(f, "name", None), str) else f  # a real file: mmap it
        obj = _torch_load(source, name, map_location, mmap=isinstance(source, str))
        return _parse_header(obj.pop("tempo_header"), name), "pickle", obj
    detail = " (empty)" if not size else ""
    raise LatentFileError(f"{name} is not a tempo latent file{detail}", hint=_NOT_TEMPO_HINT)


def read_header(path: str | Path, *, stream: BinaryIO | None = None) -> LatentHeader:
    """The header of a latent file, without loading its tensors (``-``: read from ``stream``/stdin)."""
    name, f, size = _open(path, stream)
    with f:
        return _header(f, size, name)[0]


def load(path: str | Path, *, map_location: Any = "cpu", stream: BinaryIO | None = None) -> LatentFile:
    """A whole latent file (``-``: read from ``stream``/stdin), tensors on ``map_location``."""
    name, f, size = _open(path, stream)
    with f:
        header, kind, obj = _header(f, size, name, map_location)
        if isinstance(f, io.BytesIO):
            data = f.getvalue()
            digest = hashlib.sha256(data).hexdigest()
        else:
            data, digest = None, sha256_of(path)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load, load_file

        try:
            tensors = st_load(data) if data is not None else load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise LatentFileError(f"cannot read {name}: {exc}", hint="it may be damaged; write it again") from None
        tensors = {k: t.to(map_location) for k, t in tensors.items()}
    else:
        tensors = obj
    chunks = [tensors.get(f"chunk.{i}") for i in range(len(header.chunks))]
    prompt, negative = tensors.get("prompt_embeds"), tensors.get("negative_embeds")
    if problem := _tensor_problem(header, chunks, prompt, negative):
        raise LatentFileError(f"{name}: {problem}", hint="write it again")
    extra = {k.removeprefix("extra."): t for k, t in tensors.items() if k.startswith("extra.")}
    return LatentFile(header, chunks, prompt, negative, extra, source_sha256=digest)


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (for a child's ``parent_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_compatible(header: LatentHeader, preset: str, weights_id: str, *, allow_mismatch: bool = False,
                     name: str = "the latent file") -> None:
    """Raise :class:`LatentFileError` when ``header`` was made with another preset or other weights."""
    if allow_mismatch:
        return
    problems = []
    if header.preset != preset:
        problems.append(f"preset {header.preset!r}, not {preset!r}")
    if header.weights_id != weights_id:
        problems.append(f"weights {header.weights_id!r}, not {weights_id!r}")
    if problems:
        raise LatentFileError(f"{name} was made with {' and '.join(problems)}",
                              hint="use the same preset and weights, or pass --allow-mismatch")


# ---- presenting -------------------------------------------------------------------------------------------

def header_summary(header: LatentHeader) -> dict[str, Any]:
    """The header as JSON-able data (``tempo inspect --json``), plus ``duration_s``."""
    return {**asdict(header), "duration_s": round(header.frames / header.fps, 3) if header.fps else None}


def format_header(header: LatentHeader) -> str:
    """The header as plain ``key  value`` lines for people."""
    h = header
    duration = f", {h.frames / h.fps:.2f} s" if h.fps else ""
    rows = [
        ("format", f"{h.format} v{h.format_version}, tempo {h.tempo_version}, created {h.created}"),
        ("stage", h.stage),
        ("preset", f"{h.preset} (weights {h.weights_id})"),
        ("prompt", h.prompt),
        ("negative", h.negative_prompt or "-"),
        ("sampling", f"seed {h.seed}, {h.steps} steps, shift {h.shift:g}, {h.guidance} {h.guidance_scale:g}"),
        ("video", f"{h.frames} frames, {h.width}x{h.height}, {h.fps:g} fps (interval {h.frame_interval}){duration}"),
        *_segment_rows(h),
        ("levels", str(len(h.levels)) if h.levels else "-"),
        ("parent", h.parent_sha256 or "-"),
    ]
    return "\n".join(f"{k:<9} {v}".replace("\n", "\n" + " " * 10) for k, v in rows)


def _segment_rows(h: LatentHeader) -> list[tuple[str, str]]:
    """The chunks row; for a continued video, a segments row too and the chunks segment by segment (each segment
    was generated on its own, so its chunks start their RoPE anew and the first ones cover its context)."""
    def span(chunks: list[dict]) -> str:
        return ", ".join(f"{c['start']}-{c['start'] + c['frames'] - 1} (rope {c['rope_start']})" for c in chunks)

    segments = h.extra.get("segments") or []
    counts = [s.get("chunks") for s in segments]
    if len(segments) < 2 or None in counts or sum(counts) != len(h.chunks):  # one clip, or an older file
        return [("chunks", f"{len(h.chunks)} {h.layout}: {span(h.chunks)}")]
    described, by_segment, first = [], [], 0
    for i, (segment, count) in enumerate(zip(segments, counts), start=1):
        end = segment["start"] + segment["frames"] - 1
        context = segment.get("context_frames")
        given = f" (frames {segment['start']}-{segment['start'] + context - 1} the context)" if context else ""
        described.append(f"{i}: frames {segment['start']}-{end}{given}, seed {segment['seed']}: {segment['prompt']}")
        by_segment.append(f"{i}: {span(h.chunks[first:first + count])}")
        first += count
    return [("segments", f"{len(segments)}, joined by tempo continue\n" + "\n".join(described)),
            ("chunks", f"{len(h.chunks)} {h.layout}, by segment\n" + "\n".join(by_segment))]
