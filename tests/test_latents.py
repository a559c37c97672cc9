"""Latent files: every form round-trips; bad, foreign, newer or mismatched files give one clear error."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import asdict, replace

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

from tempo_cli import latents
from tempo_cli.errors import LatentFileError, UsageError
from tempo_cli.latents import (FORMAT_NAME, FORMAT_VERSION, LatentFile, LatentHeader, check_compatible,
                               format_header, header_summary, load, read_header, save, sha256_of)

CHUNKS = [  # seamless level of 17 frames in two chunks of unequal length
    {"start": 0, "frames": 13, "latent_frames": 4, "rope_start": 0},
    {"start": 12, "frames": 5, "latent_frames": 2, "rope_start": 3},
]


def make_header(**changes) -> LatentHeader:
    header = LatentHeader(stage="refine", preset="tiny", preset_config={"dit": {"dim": 48}, "steps": 4},
                          weights_id="sha256:abc", prompt="a cat on a boat", negative_prompt="blurry", seed=7,
                          steps=4, shift=5.0, guidance="cfg", guidance_scale=5.0, fps=12.0, frame_interval=2,
                          frames=17, height=32, width=48, layout="seamless", chunks=CHUNKS,
                          parent_sha256="0" * 64, levels=[{"frames": 5, "frame_interval": 8}], extra={"note": "é"},
                          created="2026-12-02T16:00:00+00:00")  # fixed: headers made a second apart compare equal
    return replace(header, **changes)


def make_file(dtype=torch.float32, negative=True) -> LatentFile:
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(16, c["latent_frames"], 4, 6, generator=g).to(dtype) for c in CHUNKS]
    return LatentFile(make_header(), chunks, torch.randn(5, 8, generator=g).to(dtype),
                      torch.randn(3, 8, generator=g).to(dtype) if negative else None,
                      {"level0": torch.randn(16, 2, 4, 6, generator=g).to(dtype)})


def assert_same(a: LatentFile, b: LatentFile) -> None:
    assert a.header == b.header
    assert len(a.chunks) == len(b.chunks)
    for x, y in zip(a.chunks + [a.prompt_embeds], b.chunks + [b.prompt_embeds]):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert (a.negative_embeds is None) == (b.negative_embeds is None)
    if a.negative_embeds is not None:
        assert torch.equal(a.negative_embeds, b.negative_embeds)
    assert a.extra_tensors.keys() == b.extra_tensors.keys()
    assert all(torch.equal(a.extra_tensors[k], b.extra_tensors[k]) for k in a.extra_tensors)


def write_raw(path, header: dict, tensors=None, version: str | None = None) -> None:
    """A safetensors file with any tempo header (for files a tempo could not have written)."""
    tensors = tensors if tensors is not None else latents._tensors(make_file())
    meta = {"format": FORMAT_NAME, "format_version": version or str(header.get("format_version")),
            "tempo": json.dumps(header)}
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("negative", [True, False])
def test_round_trip(suffix, dtype, negative, tmp_path):
    lf = make_file(dtype, negative)
    path = tmp_path / f"level1{suffix}"
    assert save(lf, path) == str(path)
    back = load(path)
    assert_same(lf, back)
    assert read_header(path) == lf.header
    assert back.source_sha256 == sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_kind_is_read_from_content_not_suffix(tmp_path):
    save(make_file(), tmp_path / "a.pt")
    save(make_file(), tmp_path / "b.safetensors")
    (tmp_path / "a.pt").rename(tmp_path / "a.latents")
    (tmp_path / "b.safetensors").rename(tmp_path / "b.pt")
    assert_same(load(tmp_path / "a.latents"), make_file())
    assert_same(load(tmp_path / "b.pt"), make_file())


def test_dash_is_stdin_and_stdout():
    out = io.BytesIO()
    assert save(make_file(torch.bfloat16), "-", stream=out) == "-"
    data = out.getvalue()
    assert data[8:10] == b'{"'  # stdout is always safetensors
    back = load("-", stream=io.BytesIO(data))
    assert_same(back, make_file(torch.bfloat16))
    assert back.source_sha256 == hashlib.sha256(data).hexdigest()
    assert read_header("-", stream=io.BytesIO(data)) == make_header()


def test_refuses_binary_to_a_terminal():
    class Tty(io.BytesIO):
        def isatty(self):
            return True

    out = Tty()
    with pytest.raises(UsageError, match="terminal"):
        save(make_file(), "-", stream=out)
    assert out.getvalue() == b""


class CountingFile(io.BufferedReader):
    read_total = 0

    def read(self, n=-1):
        data = super().read(n)
        CountingFile.read_total += len(data)
        return data


def test_read_header_does_not_load_tensors(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save(make_file(), path)

    def refuse(*args, **kwargs):
        raise AssertionError("tensors were loaded")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    real_open = latents._open

    def counting_open(p, stream):
        name, f, size = real_open(p, stream)
        f.close()
        return name, CountingFile(io.FileIO(p)), size

    monkeypatch.setattr(latents, "_open", counting_open)
    CountingFile.read_total = 0
    assert read_header(path) == make_header()
    header_bytes = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    assert 0 < CountingFile.read_total <= header_bytes + 10  # +10: the sniffed prefix
    assert header_bytes < path.stat().st_size - 1000


def test_read_header_of_pt_memory_maps(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    save(make_file(), path)
    calls, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    assert read_header(path) == make_header()
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_failed_write_leaves_nothing_behind(suffix, tmp_path, monkeypatch):
    path = tmp_path / f"a{suffix}"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save(make_file(), path)
    assert os.listdir(tmp_path) == []


def test_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    path.write_bytes(b"old")

    def half_save(obj, f):
        f.write(b"PK\x03\x04partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(RuntimeError, match="interrupted"):
        save(make_file(), path, force=True)
    assert os.listdir(tmp_path) == ["a.pt"] and path.read_bytes() == b"old"


def test_no_overwrite_without_force(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists") as info:
        save(make_file(), path)
    assert "--force" in info.value.hint and path.read_bytes() == b"keep me"
    save(make_file(), path, force=True)
    assert_same(load(path), make_file())
    with pytest.raises(UsageError, match="does not exist"):
        save(make_file(), tmp_path / "missing" / "a.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("keep", [30, -100])  # inside the header; inside the tensor data
def test_truncated(suffix, keep, tmp_path):
    path = tmp_path / f"a{suffix}"
    save(make_file(), path)
    path.write_bytes(path.read_bytes()[:keep])
    for read in (load, read_header):
        with pytest.raises(LatentFileError, match="truncated"):
            read(path)


def test_not_a_tempo_file(tmp_path):
    rng = random.Random(0)
    cases = {
        "random.safetensors": bytes(rng.randrange(256) for _ in range(4096)),
        "config.json": json.dumps({"format": FORMAT_NAME, "format_version": 1}).encode(),
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    save_file({"w": torch.ones(3)}, str(tmp_path / "plain.safetensors"))
    save_file({"w": torch.ones(3)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    torch.save({"w": torch.ones(3)}, tmp_path / "weights.pt")
    for path in sorted(tmp_path.iterdir()):
        for read in (load, read_header):
            with pytest.raises(LatentFileError, match="not a tempo latent file"):
                read(path)
    with pytest.raises(LatentFileError, match="not found"):
        load(tmp_path / "nope.safetensors")


def test_newer_format_version(tmp_path):
    header = {**asdict(make_header()), "format_version": FORMAT_VERSION + 1, "new_field": [1]}
    write_raw(tmp_path / "a.safetensors", header)
    torch.save({"tempo_header": json.dumps(header)}, tmp_path / "a.pt")
    for name in ("a.safetensors", "a.pt"):
        with pytest.raises(LatentFileError, match=r"newer tempo \(format version 2; this tempo reads up to 1\)") as e:
            load(tmp_path / name)
        assert "upgrade" in e.value.hint


def test_header_fields_are_checked(tmp_path):
    good = asdict(make_header())
    write_raw(tmp_path / "unknown.safetensors", {**good, "added_later": True})
    assert read_header(tmp_path / "unknown.safetensors") == make_header()  # unknown fields are ignored
    write_raw(tmp_path / "int.safetensors", {**good, "shift": 5})
    assert read_header(tmp_path / "int.safetensors").shift == 5.0
    bad = {"seed": "7", "parent_sha256": 3, "steps": True, "chunks": [{"start": 0}]}
    for key, value in bad.items():
        write_raw(tmp_path / f"{key}.safetensors", {**good, key: value})
        with pytest.raises(LatentFileError, match=key.rstrip("s")):
            read_header(tmp_path / f"{key}.safetensors")
    write_raw(tmp_path / "missing.safetensors", {k: v for k, v in good.items() if k != "seed"})
    with pytest.raises(LatentFileError, match="lacks seed"):
        read_header(tmp_path / "missing.safetensors")


def test_missing_or_misshapen_tensors(tmp_path):
    tensors = latents._tensors(make_file())
    write_raw(tmp_path / "a.safetensors", asdict(make_header()), {k: t for k, t in tensors.items() if k != "chunk.1"})
    with pytest.raises(LatentFileError, match="tensors chunk.1 are missing"):
        load(tmp_path / "a.safetensors")
    write_raw(tmp_path / "b.safetensors", asdict(make_header()), {**tensors, "chunk.1": torch.zeros(16, 3, 4, 6)})
    with pytest.raises(LatentFileError, match=r"chunk 1 has shape \[16, 3, 4, 6\]"):
        load(tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="2 chunks"):
        LatentFile(make_header(), make_file().chunks[:1], torch.zeros(5, 8))


def test_check_compatible():
    header = make_header()
    check_compatible(header, "tiny", "sha256:abc")
    with pytest.raises(LatentFileError, match="preset 'tiny', not 'big'") as info:
        check_compatible(header, "big", "sha256:abc")
    assert "--allow-mismatch" in info.value.hint
    with pytest.raises(LatentFileError, match="weights 'sha256:abc', not 'sha256:def'"):
        check_compatible(header, "tiny", "sha256:def", name="a.safetensors")
    check_compatible(header, "big", "sha256:def", allow_mismatch=True)


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 << 20 | 123)
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_summary_and_text():
    summary = header_summary(make_header())
    assert json.loads(json.dumps(summary)) == summary
    assert summary["prompt"] == "a cat on a boat" and summary["duration_s"] == pytest.approx(17 / 12, abs=1e-3)
    text = format_header(make_header())
    assert "a cat on a boat" in text and "2 seamless" in text and "\n" in text
    assert "chunks    2 seamless: 0-12 (rope 0), 12-16 (rope 3)" in text.splitlines()
    # a continued file written before segments counted their chunks: the one list, as before
    older = make_header(extra={"segments": [{"start": 0, "frames": 13, "prompt": "a", "seed": 0},
                                            {"start": 12, "frames": 5, "context_frames": 1, "prompt": "b", "seed": 1}]})
    assert "segments" not in format_header(older) and "2 seamless: 0-12" in format_header(older)
