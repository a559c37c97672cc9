"""Bad input gives one error on stderr (``tempo: error: ...``, optionally a ``  hint:`` line), exit 1 (or 2 for
the command line itself), nothing on stdout, nothing written, and no model built: every check runs before
any heavy work. ``TEMPO_DEBUG=1`` shows the traceback instead, and ``--help`` never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import Run, tempo
from tempo_cli.cli import main
from tempo_cli.errors import CheckpointError, ConfigError, TempoError
from tempo_cli.latents import load, save

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TINY = ("--preset", "tiny-random", "--device", "cpu", "--dtype", "fp32")
FAST = ("--set", "sampler.steps=[1,1,1]")
COPY_PRESET = """\
description: tiny-random with other random weights, under another name.
extends: tiny-random
weights:
  random_seed: 1
"""


# ---- running tempo and judging the failure --------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporary files included) and its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_error(run: Run, code: int, *phrases: str, hint: str | None = None) -> str:
    """One ``tempo: error:`` line (what went wrong, naming ``phrases``), at most one hint line after it, the
    given exit code, nothing on stdout. Returns the message."""
    assert run.code == code, run.err
    assert run.out == b""
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("tempo: error: ")]
    assert len(errors) == 1, run.err
    after = lines[errors[0] + 1:]
    assert after == [] or (len(after) == 1 and after[0].startswith("  hint: ")), run.err
    message = lines[errors[0]]
    for phrase in phrases:
        assert phrase in message, message
    if hint is not None:
        assert after and hint in after[0], run.err
    return message


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if any network is built: bad input must be refused before any heavy work."""
    from tempo_cli.runtime import ModelStore

    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was built before the input was checked")

    for name in ("dit", "vae", "text_encoder"):
        monkeypatch.setattr(ModelStore, name, refuse)
    monkeypatch.setattr("tempo_cli.loading.read_state_dict", refuse)


@pytest.fixture
def here(tmp_path, monkeypatch, no_models):
    """An empty working folder; every test here checks it is unchanged afterwards."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- inputs made once ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 6 fps blueprint of tiny-random, and one of a copy of it with other weights (found via TEMPO_PRESETS)."""
    folder = tmp_path_factory.mktemp("made")
    presets = folder / "presets"
    presets.mkdir()
    (presets / "tiny-copy.yaml").write_text(COPY_PRESET)
    blueprint, copy = folder / "blueprint.safetensors", folder / "copy.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPO_PRESETS", str(presets))
        for preset, path in (("tiny-random", blueprint), ("tiny-copy", copy)):
            run = tempo("blueprint", "a dog in snow", "--frames", 5, "--preset", preset, "--device", "cpu", *FAST,
                        "-o", path)
            assert run.code == 0, run.err
    return type("Made", (), {"blueprint": blueprint, "copy": copy, "presets": presets})


def edited(source: Path, target: Path, **changes) -> Path:
    """A copy of a latent file with header fields changed, written as tempo writes files."""
    latent_file = load(source)
    save(replace(latent_file, header=replace(latent_file.header, **changes)), target)
    return target


def with_raw_metadata(source: Path, target: Path, edit) -> Path:
    """A copy of a latent file whose safetensors metadata and tempo header JSON went through ``edit(meta,
    header)``: for files this tempo could not have written (e.g. by a newer one)."""
    data = source.read_bytes()
    n = int.from_bytes(data[:8], "little")
    table = json.loads(data[8:8 + n])
    meta = table["__metadata__"]
    header = json.loads(meta["tempo"])
    edit(meta, header)
    meta["tempo"] = json.dumps(header)
    raw = json.dumps(table).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    return target


def image(path: Path, color=(200, 30, 30)) -> Path:
    Image.new("RGB", (80, 48), color).save(path)
    return path


# ---- presets and options -------------------------------------------------------------------------------------------

def test_unknown_preset(here):
    before = snapshot(here)
    run = tempo("blueprint", "a dog", "--preset", "no-such-preset")
    assert_error(run, 1, "unknown preset 'no-such-preset'", hint="tiny-random")
    assert snapshot(here) == before


def test_unknown_preset_key(here):
    run = tempo("blueprint", "a dog", "--preset", "tiny-random", "--set", "dit.heads=3")
    assert_error(run, 1, "unknown key 'dit.heads'", hint="num_heads")
    assert snapshot(here) == {}


def test_fps_that_is_not_a_level_of_the_preset(here):
    run = tempo("blueprint", "a dog", *TINY, "--fps", 7)
    assert_error(run, 2, "--fps 7 is not a level of preset tiny-random", hint="6, 12, 24")
    assert snapshot(here) == {}


@pytest.mark.parametrize("frames, nearest", [(10, "9 or 13"), (3, "5")])
def test_frames_that_are_not_4k_plus_1_name_the_nearest_valid_counts(here, frames, nearest):
    run = tempo("blueprint", "a dog", *TINY, "--frames", frames)
    assert_error(run, 1, f"--frames must be 4k+1 (k >= 1), got {frames}", f"nearest valid: {nearest}")
    assert_error(tempo("plan", "--preset", "tiny-random", "--frames", frames), 1, f"nearest valid: {nearest}")
    assert snapshot(here) == {}


@pytest.mark.parametrize("key", ["height", "width"])
def test_size_that_is_not_a_multiple_of_16(here, key):
    run = tempo("blueprint", "a dog", *TINY, "--frames", 5, "--set", f"video.{key}=60")
    assert_error(run, 1, f"video.{key} must be a multiple of 16, got 60")
    assert snapshot(here) == {}


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(here, prompt):
    assert_error(tempo("blueprint", prompt, *TINY, "--frames", 5), 2, "the prompt is empty", hint="tempo blueprint")
    assert_error(tempo("generate", prompt, *TINY, "--frames", 5, "-o", "x.mp4"), 2, "the prompt is empty")
    assert snapshot(here) == {}


def test_empty_continuation_prompt(here, made):
    shutil.copy(made.blueprint, "in.safetensors")
    before = snapshot(here)
    assert_error(tempo("continue", "in.safetensors", "--prompt", " ", "-o", "out.safetensors"), 2, "--prompt is empty")
    assert snapshot(here) == before


@pytest.mark.parametrize("args, phrase", [
    (("--keyframe", "nonsense"), "expected TIME=IMAGE"),
    (("--keyframe", "2s=key.png"), "falls outside the 5 frames"),
    (("--keyframe", "5f=key.png"), "falls outside the 5 frames"),
])
def test_bad_keyframes(here, args, phrase):
    image(here / "key.png")
    before = snapshot(here)
    assert_error(tempo("blueprint", "a dog", *TINY, "--frames", 5, *args), 2, phrase)
    assert snapshot(here) == before


def test_unknown_option_is_a_usage_error(here):
    run = tempo("blueprint", "a dog", "--no-such-option")
    assert run.code == 2 and run.out == b"" and "No such option" in run.err
    assert snapshot(here) == {}


def test_a_negative_training_seed_is_a_usage_error(here):
    """A run's seed keys its clips and must be the same on every resume, so train has no "-1 draws one"."""
    assert_error(tempo("train", "--seed", "-1", "--out", "run"), 2, "--seed must be 0 or more, got -1",
                 hint="same on every resume")
    assert snapshot(here) == {}


# ---- refine: direction, levels, layout ---------------------------------------------------------------------------

def test_refine_goes_from_coarse_to_fine(here, made):
    shutil.copy(made.blueprint, "b6.safetensors")
    edited(made.blueprint, here / "b24.safetensors", fps=24.0, frame_interval=1)
    before = snapshot(here)
    assert_error(tempo("refine", "b6.safetensors", "--to", 6), 2, "--to 6 fps is not finer than the input's 6 fps",
                 hint="coarse to fine")
    assert_error(tempo("refine", "b24.safetensors", "--to", 12), 2, "--to 12 fps is not finer than the input's 24 fps")
    assert snapshot(here) == before


@pytest.mark.parametrize("args, code, phrase", [
    (("--to", 24, "--via", "6,abc"), 2, "--via '6,abc': expected comma-separated numbers"),
    (("--to", 24, "--via", "6,13"), 1, "13 fps does not divide the base rate 24 fps"),
    (("--to", 24, "--chunks", "2,4,8"), 2, "--chunks needs 2 count(s)"),
    (("--to", 24, "--layout", "diagonal"), 2, "--layout 'diagonal': choose seamless or reference"),
    (("--to", 24, "--layout", "reference", "--chunks", "2,4"), 2, "--chunks cannot be used with --layout reference"),
    (("--to", 7), 2, "--to 7 is not a level of preset tiny-random"),
])
def test_bad_refine_options(here, made, args, code, phrase):
    shutil.copy(made.blueprint, "b6.safetensors")
    before = snapshot(here)
    assert_error(tempo("refine", "b6.safetensors", *args), code, phrase)
    assert snapshot(here) == before


# ---- latent files that cannot be used ------------------------------------------------------------------------------

def bad_latent_file(kind: str, made, folder: Path) -> Path:
    path = folder / "bad.safetensors"
    if kind == "truncated":
        path.write_bytes(made.blueprint.read_bytes()[:3000])
    elif kind == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "png":
        path = image(folder / "picture.png")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "newer":
        def newer(meta, header):
            meta["format_version"], header["format_version"] = "2", 2

        with_raw_metadata(made.blueprint, path, newer)
    return path


@pytest.mark.parametrize("kind, phrase, hint", [
    ("truncated", "is truncated", None),
    ("random bytes", "is not a tempo latent file", "file written by a tempo stage"),
    ("png", "is not a tempo latent file", "file written by a tempo stage"),
    ("empty", "is not a tempo latent file (empty)", None),
    ("newer", "was made by a newer tempo (format version 2; this tempo reads up to 1)", "upgrade tempo"),
])
@pytest.mark.parametrize("command", [("refine", "--to", 12), ("encode", "-o", "out.mp4"),
                                     ("continue", "-o", "out.safetensors"), ("inspect",)])
def test_unusable_latent_files(here, made, kind, phrase, hint, command):
    path = bad_latent_file(kind, made, here)
    before = snapshot(here)
    assert_error(tempo(command[0], path.name, *command[1:]), 1, phrase, hint=hint)
    assert snapshot(here) == before


def test_missing_latent_file(here):
    assert_error(tempo("refine", "nowhere.safetensors"), 1, "latent file not found: nowhere.safetensors")
    assert snapshot(here) == {}


def test_a_newer_file_read_from_stdin(here, made):
    path = bad_latent_file("newer", made, here)
    before = snapshot(here)
    assert_error(tempo("refine", "-", "--to", 12, stdin=path.read_bytes()), 1, "<stdin> was made by a newer tempo")
    assert snapshot(here) == before


def test_another_preset_and_other_weights(here, made, monkeypatch):
    monkeypatch.setenv("TEMPO_PRESETS", str(made.presets))
    shutil.copy(made.copy, "copy.safetensors")
    before = snapshot(here)
    run = tempo("refine", "copy.safetensors", "--to", 12, "--preset", "tiny-random", "-o", "out.safetensors")
    assert_error(run, 1, "copy.safetensors was made with preset 'tiny-copy', not 'tiny-random' and weights "
                         "'random:1', not 'random:0'", hint="--allow-mismatch")
    assert snapshot(here) == before


@pytest.mark.parametrize("command", [("refine", "--to", 12), ("encode", "-o", "out.mp4"),
                                     ("continue", "-o", "out.safetensors")])
def test_other_weights_are_refused_by_every_stage(here, made, command):
    edited(made.blueprint, here / "foreign.safetensors", weights_id="sha256:0123456789abcdef")
    before = snapshot(here)
    run = tempo(command[0], "foreign.safetensors", *command[1:])
    assert_error(run, 1, "was made with weights 'sha256:0123456789abcdef', not 'random:0'", hint="--allow-mismatch")
    assert snapshot(here) == before


def test_allow_mismatch_accepts_them(tmp_path, made, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEMPO_PRESETS", str(made.presets))
    shutil.copy(made.copy, "copy.safetensors")
    run = tempo("refine", "copy.safetensors", "--to", 12, "--preset", "tiny-random", "--allow-mismatch", *FAST,
                "--device", "cpu", "-o", "out.safetensors")
    assert run.code == 0, run.err
    assert run.out == b"out.safetensors\n" and load("out.safetensors").header.frames == 9
    edited(made.blueprint, tmp_path / "foreign.safetensors", weights_id="sha256:0123456789abcdef")
    run = tempo("encode", "foreign.safetensors", "--allow-mismatch", "--device", "cpu", "-o", "out.mp4")
    assert run.code == 0, run.err
    assert run.out == b"out.mp4\n"


# ---- weights ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["blueprint", "refine"])
def test_missing_weights_are_one_error_naming_every_file_and_place(here, made, monkeypatch, stage):
    for name in ("weights", "env", "cache"):
        (here / name).mkdir()
    monkeypatch.setenv("TEMPO_WEIGHTS", str(here / "env"))
    monkeypatch.setenv("TEMPO_CACHE", str(here / "cache"))
    shutil.copy(made.blueprint, "b6.safetensors")
    before = snapshot(here)
    args = (["blueprint", "a dog"] if stage == "blueprint" else ["refine", "b6.safetensors", "--to", 12])
    run = tempo(*args, "--preset", "tempomaster-14b", "--weights", here / "weights", "-o", "out.safetensors")
    assert run.code == 1 and run.out == b"" and "Traceback" not in run.err
    message = run.err[run.err.index("tempo: error: "):]
    assert message.count("tempo: error: ") == 1
    assert "preset 'tempomaster-14b' is missing 4 weight file(s)" in message
    for name in ("wan_video_dit_bf16.bin", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl"):
        assert name in message
    for place in (f"{here / 'weights'} (--weights)", f"{here / 'env'} (TEMPO_WEIGHTS)",
                  f"{here / 'cache' / 'tempomaster-14b'} (cache, does not exist)"):
        assert place in message
    assert "  hint: pass --weights DIR, set TEMPO_WEIGHTS" in message
    assert snapshot(here) == before


# ---- images and videos ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--image", "--last-image", "--keyframe"])
@pytest.mark.parametrize("name, phrase", [("nonexistent.png", "no such file"),
                                          ("corrupt.png", "cannot identify image file")])
def test_unreadable_images(here, option, name, phrase):
    (here / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    before = snapshot(here)
    value = f"2f={name}" if option == "--keyframe" else name
    assert_error(tempo("blueprint", "a dog", *TINY, "--frames", 5, option, value), 1,
                 f"cannot read image {name}", phrase)
    assert snapshot(here) == before


@pytest.mark.parametrize("stage", ["refine", "continue"])
def test_unreadable_videos(here, stage):
    (here / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    before = snapshot(here)
    run = tempo(stage, "broken.mp4", "--prompt", "a dog", *TINY)
    assert_error(run, 1, "cannot read video broken.mp4")
    assert_error(tempo(stage, "missing.mp4", "--prompt", "a dog", *TINY), 1, "cannot read video missing.mp4")
    assert snapshot(here) == before


@pytest.mark.parametrize("stage", ["blueprint", "generate"])
def test_bad_video_to_video_options(here, stage):
    from tempo_cli.video import write_video

    write_video(np.full((7, 48, 64, 3), 90, np.uint8), here / "short.mp4", 6)  # 1 s at 6 fps
    (here / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    before = snapshot(here)
    assert_error(tempo(stage, "a dog", *TINY, "--strength", 0.5), 2, "--strength needs --video")
    for strength in ("0", "1.5", "nan"):
        assert_error(tempo(stage, "a dog", *TINY, "--video", "short.mp4", "--strength", strength), 2,
                     f"--strength must be in (0, 1], got {float(strength):g}", hint="lower keeps more")
    assert_error(tempo(stage, "a dog", *TINY, "--video", "short.mp4", "--seconds", 2), 2,
                 "--video short.mp4 gives 7 frame(s) at 6 fps; the blueprint needs 13", hint="shorter --seconds")
    assert_error(tempo(stage, "a dog", *TINY, "--video", "broken.mp4"), 1, "cannot read video broken.mp4")
    assert_error(tempo(stage, "a dog", *TINY, "--video", "missing.mp4"), 1, "cannot read video missing.mp4")
    assert snapshot(here) == before


@pytest.mark.parametrize("stage", ["blueprint", "generate"])
@pytest.mark.parametrize("scale", ["0.5", "-2", "nan"])
def test_guidance_scale_below_one(here, stage, scale):
    before = snapshot(here)
    assert_error(tempo(stage, "a dog", *TINY, "--guidance-scale", scale), 2,
                 f"--guidance-scale must be at least 1, got {float(scale):g}", hint="1 turns guidance off")
    assert snapshot(here) == before


def test_a_video_needs_a_prompt(here):
    (here / "clip.mp4").write_bytes(b"whatever: the prompt is checked first")
    before = snapshot(here)
    assert_error(tempo("refine", "clip.mp4", *TINY), 2, "refining a video needs --prompt")
    assert snapshot(here) == before


# ---- outputs ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("blueprint", "a dog", *TINY, "--frames", 5, "-o", "taken"),
    ("refine", "b6.safetensors", "--to", 12, "-o", "taken"),
    ("continue", "b6.safetensors", "-o", "taken"),
    ("encode", "b6.safetensors", "-o", "taken.mp4"),
    ("encode", "b6.safetensors", "-o", "new.mp4", "--sheet", "taken.png"),
    ("generate", "a dog", *TINY, "-o", "taken.mp4"),
    ("generate", "a dog", *TINY, "-o", "new.mp4", "--latents", "taken"),
])
def test_an_existing_output_is_refused_without_force(here, made, args):
    shutil.copy(made.blueprint, "b6.safetensors")
    for name in ("taken", "taken.mp4", "taken.png"):
        (here / name).write_bytes(b"keep me")
    before = snapshot(here)
    assert_error(tempo(*args), 2, "taken", "exists", hint="--force")
    assert snapshot(here) == before


def test_force_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_bytes(b"keep me")
    run = tempo("blueprint", "a dog", *TINY, *FAST, "--frames", 5, "-o", "taken", "--force")
    assert run.code == 0, run.err
    assert run.out == b"taken\n"
    assert load("taken").header.stage == "blueprint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary file left behind


@pytest.mark.parametrize("args, phrase", [
    (("encode", "b6.safetensors", "-o", "video.avi"), "cannot write video video.avi: unknown suffix '.avi'"),
    (("encode", "b6.safetensors", "-o", "-"), "cannot write video -: unknown suffix ''"),
    (("encode", "b6.safetensors", "--sheet", "sheet.jpg"), "cannot write contact sheet sheet.jpg: it must be a .png"),
    (("encode", "-"), "reading stdin: name the video with -o"),
    (("encode", "b6.safetensors", "--quality", 60), "--quality must be a CRF from 0 to 51"),
    (("generate", "a dog", *TINY, "-o", "video.avi"), "cannot write video video.avi: unknown suffix '.avi'"),
    (("generate", "a dog", *TINY, "--via", "6,abc"), "--via '6,abc': expected comma-separated numbers"),
])
def test_bad_outputs_are_refused_before_decoding_or_generating(here, made, args, phrase):
    shutil.copy(made.blueprint, "b6.safetensors")
    before = snapshot(here)
    assert_error(tempo(*args), 2, phrase)
    assert snapshot(here) == before


# ---- debugging and help ------------------------------------------------------------------------------------------

def test_tempo_debug_shows_the_traceback(here, monkeypatch):
    monkeypatch.setenv("TEMPO_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown preset 'no-such-preset'"):
        main(["blueprint", "a dog", "--preset", "no-such-preset"])
    monkeypatch.setenv("TEMPO_WEIGHTS", str(here))
    monkeypatch.setenv("TEMPO_CACHE", str(here))
    with pytest.raises(CheckpointError):
        main(["blueprint", "a dog", "--preset", "tempomaster-14b", "-o", "out.safetensors"])
    assert snapshot(here) == {}


def test_errors_are_tempo_errors_not_tracebacks_without_debug(here, monkeypatch):
    monkeypatch.delenv("TEMPO_DEBUG", raising=False)
    assert main(["blueprint", "a dog", "--preset", "no-such-preset"]) == 1
    assert issubclass(ConfigError, TempoError)


def test_help_does_not_import_torch():
    code = ("import sys; from tempo_cli.cli import main; "
            "codes = [main(['--help']), main(['blueprint', '--help']), main(['refine', '--help'])]; "
            "assert codes == [0, 0, 0], codes; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'safetensors')); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "blueprint" in proc.stdout and "--frames" in proc.stdout and "--via" in proc.stdout


def test_console_script_help():
    script = Path(sys.executable).with_name("tempo")
    if not script.is_file():
        pytest.skip("the tempo console script is not installed beside this interpreter")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for stage in ("blueprint", "refine", "continue", "encode", "generate"):
        assert stage in proc.stdout

