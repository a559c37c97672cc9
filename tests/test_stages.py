"""Every stage end to end on ``tiny-random``, through files and through pipes: what each writes, what it prints
where, the headers it records, frame counts, continuation joins and determinism.

Runs happen in this process through ``tempo_cli.cli.main`` (the console script's entry point) with stdin,
stdout and stderr swapped for buffers, so fixtures shared by a module can run the expensive chain once; one
test runs a real shell pipe of console scripts. ``tiny-random`` has random weights: the videos are noise, but
their shapes, counts, headers and determinism are the real thing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from cli_runner import Run, tempo
from tempo_cli.cli import main
from tempo_cli.latents import LatentFile, load
from tempo_cli.video import count_frames, read_metadata, read_video

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

PROMPT = "a dog in snow"
N = 9  # blueprint frames at 6 fps (4k+1); the reference fixtures include a layout refined from exactly 9
CPU = ("--device", "cpu", "--dtype", "fp32")  # the same everywhere, so that separate runs compare bit for bit
NOTICE = "uses random weights"


# ---- running tempo -----------------------------------------------------------------------------------------


def ok(run: Run) -> Run:
    assert run.code == 0, run.err
    assert "tempo: error" not in run.err and "Traceback" not in run.err
    return run


def tempo_executable() -> list[str]:
    script = Path(sys.executable).with_name("tempo")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tempo_cli.cli"]


# ---- reading results ----------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def from_bytes(data: bytes) -> LatentFile:
    return load("-", stream=io.BytesIO(data))


def exactly_one_safetensors_file(data: bytes) -> bool:
    """Whether ``data`` is one whole safetensors file and nothing else (no text before or after it)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    return len(data) == 8 + n + end


def same_latents(a: LatentFile, b: LatentFile) -> bool:
    return len(a.chunks) == len(b.chunks) and all(torch.equal(x, y) for x, y in zip(a.chunks, b.chunks))


def decoded(latent_file: LatentFile) -> torch.Tensor:
    """The video ``[3, T, H, W]`` a latent file holds, decoded with tiny-random's VAE."""
    from tempo_cli.pipeline import decode_file
    from tempo_cli.presets import load_preset
    from tempo_cli.runtime import ModelStore

    store = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32)
    return decode_file(store, latent_file)


# ---- the chain through files, run once for the module ---------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """blueprint -> refine 12 -> refine 24 -> encode, with the default output names, progress bars on."""
    folder = tmp_path_factory.mktemp("chain")
    with contextlib.chdir(folder):
        runs = {
            "blueprint": tempo("blueprint", PROMPT, "--fps", 6, "--frames", N, "--preset", "tiny-random", *CPU),
            "refine12": tempo("refine", "a-dog-in-snow-6fps.safetensors", "--to", 12, *CPU),
            "refine24": tempo("refine", "a-dog-in-snow-12fps.safetensors", "--to", 24, *CPU),
            "encode": tempo("encode", "a-dog-in-snow-24fps.safetensors", *CPU),
        }
    for run in runs.values():
        ok(run)
    return SimpleNamespace(dir=folder, runs=runs, b6=folder / "a-dog-in-snow-6fps.safetensors",
                           r12=folder / "a-dog-in-snow-12fps.safetensors",
                           r24=folder / "a-dog-in-snow-24fps.safetensors",
                           mp4=folder / "a-dog-in-snow-24fps.mp4")


@pytest.fixture(scope="module")
def b6_mp4(chain):
    """The blueprint encoded at its own frame rate (the video input of continuation)."""
    path = chain.dir / "blueprint.mp4"
    run = ok(tempo("encode", chain.b6, "-o", path, *CPU))
    assert run.lines == [str(path)]
    return path


def test_blueprint_writes_the_coarsest_level_and_prints_only_its_path(chain):
    run = chain.runs["blueprint"]
    assert run.out == b"a-dog-in-snow-6fps.safetensors\n"
    assert NOTICE in run.err and "level 0 (interval 4)" in run.err  # the notice and progress go to stderr
    blueprint = load(chain.b6)
    h = blueprint.header
    assert (h.stage, h.preset, h.weights_id, h.prompt, h.seed) == ("blueprint", "tiny-random", "random:0", PROMPT, 0)
    assert (h.fps, h.frame_interval, h.frames, h.layout) == (6.0, 4, N, "blueprint")
    assert (h.height, h.width, h.steps, h.shift) == (64, 64, 2, 5.0)
    assert len(h.chunks) == 1 and h.chunks[0]["frames"] == N
    assert h.parent_sha256 is None and h.levels == [] and h.extra["anchors"] == {}
    assert h.preset_config["name"] == "tiny-random" and h.preset_config["video"]["fps"] == 24
    assert [tuple(c.shape) for c in blueprint.chunks] == [(16, 1 + (N - 1) // 4, 8, 8)]  # [z, F, h, w]
    assert blueprint.prompt_embeds.ndim == 2 and blueprint.negative_embeds is not None


def test_refine_to_12_fps_doubles_the_frames_in_two_chunks(chain):
    run = chain.runs["refine12"]
    assert run.out == b"a-dog-in-snow-12fps.safetensors\n"
    assert NOTICE in run.err and "level 1 (interval 2): 2 chunk(s)" in run.err
    refined = load(chain.r12)
    h = refined.header
    assert (h.stage, h.preset, h.weights_id, h.seed, h.prompt) == ("refine", "tiny-random", "random:0", 0, PROMPT)
    assert (h.fps, h.frame_interval, h.frames, h.layout) == (12.0, 2, 2 * N - 1, "seamless")
    assert len(h.chunks) == 2 and [c["start"] for c in h.chunks] == [0, N - 1]  # the boundary frame is shared
    assert h.parent_sha256 == sha256(chain.b6)
    assert h.levels == [{"fps": 6.0, "frame_interval": 4, "frames": N, "layout": "blueprint", "chunks": 1,
                         "steps": 2}]
    assert torch.equal(refined.prompt_embeds, load(chain.b6).prompt_embeds)  # never re-encoded


def test_refine_to_24_fps_gives_4n_minus_3_frames_in_four_chunks(chain):
    assert chain.runs["refine24"].out == b"a-dog-in-snow-24fps.safetensors\n"
    h = load(chain.r24).header
    assert (h.stage, h.fps, h.frame_interval, h.frames, h.layout) == ("refine", 24.0, 1, 4 * N - 3, "seamless")
    assert len(h.chunks) == 4
    assert h.parent_sha256 == sha256(chain.r12)
    assert [(lv["fps"], lv["frames"], lv["chunks"]) for lv in h.levels] == [(6.0, N, 1), (12.0, 2 * N - 1, 2)]


def test_encode_writes_every_frame(chain):
    run = chain.runs["encode"]
    assert run.lines == ["a-dog-in-snow-24fps.mp4"]  # default name: the input's, with .mp4
    assert NOTICE in run.err and "decoding 4 chunk(s)" in run.err
    assert count_frames(chain.mp4) == 4 * N - 3
    frames, fps = read_video(chain.mp4)
    assert fps == 24 and frames.shape == (4 * N - 3, 64, 64, 3)


def test_encode_gif_at_another_frame_rate_and_a_contact_sheet(chain, tmp_path):
    gif, sheet = tmp_path / "dog.gif", tmp_path / "dog.png"
    run = ok(tempo("encode", chain.b6, "-o", gif, "--fps", 3, "--sheet", sheet, *CPU))
    assert run.lines == [str(gif), str(sheet)]
    assert count_frames(gif) == N
    assert read_video(gif)[1] == pytest.approx(3, abs=0.05)
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 64


def test_encode_plays_at_the_level_rate_unless_told(b6_mp4):
    assert count_frames(b6_mp4) == N
    assert read_video(b6_mp4)[1] == 6


def test_encode_prints_only_paths_on_the_stdout_file_descriptor(chain, tmp_path, capfdbinary):
    """ffmpeg runs in child processes: nothing of theirs may reach file descriptor 1 either."""
    target = tmp_path / "dog.mp4"
    assert main(["encode", str(chain.b6), "-o", str(target), "--quiet", *CPU]) == 0
    captured = capfdbinary.readouterr()
    assert captured.out == f"{target}\n".encode()
    assert NOTICE.encode() in captured.err


def test_inspect_json_reads_the_header_without_loading_tensors(chain, monkeypatch):
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("inspect loaded tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    monkeypatch.setattr("tempo_cli.latents.load", refuse)
    run = ok(tempo("inspect", "--json", chain.r24))
    data = json.loads(run.out)
    assert (data["stage"], data["frames"], data["fps"], data["parent_sha256"]) == ("refine", 4 * N - 3, 24.0,
                                                                                  sha256(chain.r12))
    assert len(data["chunks"]) == 4 and len(data["levels"]) == 2 and data["format_version"] == 1
    text = ok(tempo("inspect", chain.r24)).out.decode()
    assert "refine" in text and f"{4 * N - 3} frames" in text


def test_inspect_does_not_import_torch(chain):
    code = ("import sys; from tempo_cli.cli import main; "
            f"code = main(['inspect', '--json', {str(chain.r24)!r}]); "
            "assert code == 0, code; "
            "assert 'torch' not in sys.modules and 'safetensors.torch' not in sys.modules, 'tensors were loaded'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] == 4 * N - 3


# ---- refine options --------------------------------------------------------------------------------------------

def test_refine_via_skips_a_level_and_chunks_sets_the_count(chain, tmp_path):
    target = tmp_path / "via.safetensors"
    run = ok(tempo("refine", chain.b6, "--via", "6,24", "--chunks", 2, "-o", target, *CPU))
    assert run.lines == [str(target)]
    assert "interval 2" not in run.err  # no 12 fps level was generated
    h = load(target).header
    assert (h.fps, h.frames, len(h.chunks)) == (24.0, 4 * N - 3, 2)
    assert [c["frames"] for c in h.chunks] == [2 * N - 1, 2 * N - 1]
    assert [lv["fps"] for lv in h.levels] == [6.0]


def test_refine_reference_layout_is_the_releases(chain, tmp_path, reference):
    """--layout reference: frames_in * 2 frames at 12 fps, frames_in * 4 at 24, chunk conditions exactly as
    the release lays them out (condition_layouts.json has both steps from a 9-frame blueprint)."""
    fixtures = {(e["frames_in"], e["interval_from"], e["interval_to"]): e["chunks"]
                for e in json.loads((reference / "condition_layouts.json").read_text())["layouts"]}
    r12, r24 = tmp_path / "ref12.safetensors", tmp_path / "ref24.safetensors"
    ok(tempo("refine", chain.b6, "--to", 12, "--layout", "reference", "-o", r12, *CPU))
    ok(tempo("refine", r12, "--to", 24, "--layout", "reference", "-o", r24, *CPU))
    h12, h24 = load(r12).header, load(r24).header
    assert (h12.layout, h12.frames, len(h12.chunks)) == ("reference", 2 * N, 2)
    assert (h24.layout, h24.frames, len(h24.chunks)) == ("reference", 4 * N, 4)
    assert [{"source_frame": c["source_frame"], "mask": c["mask"]} for c in h12.chunks] == fixtures[(N, 4, 2)]
    assert [{"source_frame": c["source_frame"], "mask": c["mask"]} for c in h24.chunks] == fixtures[(2 * N, 2, 1)]
    assert h24.parent_sha256 == sha256(r12)


def test_refine_records_the_steps_of_every_level(chain, tmp_path):
    target = tmp_path / "steps.safetensors"
    ok(tempo("refine", chain.b6, "--to", 24, "--set", "sampler.steps=[2,1,3]", "-o", target, *CPU))
    h = load(target).header
    assert h.steps == 3
    assert [(lv["fps"], lv["steps"]) for lv in h.levels] == [(6.0, 2), (12.0, 1)]


# ---- pipes ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def piped(chain):
    """The same chain through '-': blueprint -o - | refine - --to 12 -o - | refine - --to 24 -o - | encode - -o
    piped.mp4, plus continue - -o - and inspect - on the blueprint's bytes."""
    blueprint = ok(tempo("blueprint", PROMPT, "--frames", N, "--preset", "tiny-random", "-o", "-", *CPU))
    refined12 = ok(tempo("refine", "-", "--to", 12, "-o", "-", *CPU, stdin=blueprint.out))
    refined = ok(tempo("refine", "-", "--to", 24, "-o", "-", *CPU, stdin=refined12.out))
    video = chain.dir / "piped.mp4"
    encoded = ok(tempo("encode", "-", "-o", video, *CPU, stdin=refined.out))
    continued = ok(tempo("continue", "-", "--seconds", 1, "--context", "0.5s", "-o", "-", *CPU,
                         stdin=blueprint.out))
    inspected = ok(tempo("inspect", "--json", "-", stdin=blueprint.out))
    return SimpleNamespace(blueprint=blueprint, refined12=refined12, refined=refined, encoded=encoded, video=video,
                           continued=continued, inspected=inspected)


def test_pipes_carry_only_latent_files_on_stdout(piped):
    for run in (piped.blueprint, piped.refined12, piped.refined, piped.continued):
        assert run.out[8:10] == b'{"' and exactly_one_safetensors_file(run.out)
        assert NOTICE in run.err
    assert piped.encoded.lines == [str(piped.video)]
    assert count_frames(piped.video) == 4 * N - 3
    assert json.loads(piped.inspected.out)["frames"] == N


def test_pipes_record_the_parent_of_stdin(piped):
    refined12, refined = from_bytes(piped.refined12.out), from_bytes(piped.refined.out)
    assert refined12.header.parent_sha256 == hashlib.sha256(piped.blueprint.out).hexdigest()
    assert refined.header.parent_sha256 == hashlib.sha256(piped.refined12.out).hexdigest()
    assert (refined12.header.frames, len(refined12.header.chunks)) == (2 * N - 1, 2)
    assert (refined.header.frames, len(refined.header.chunks)) == (4 * N - 3, 4)
    assert from_bytes(piped.continued.out).header.parent_sha256 == hashlib.sha256(piped.blueprint.out).hexdigest()


def test_real_shell_pipe_of_console_scripts(tmp_path):
    exe, cpu = " ".join(map(shlex.quote, tempo_executable())), " ".join(CPU)
    script = (f"set -o pipefail; {exe} blueprint 'a dog in snow' --preset tiny-random --frames 5 {cpu} "
              f"--set 'sampler.steps=[1,1,1]' -o - | {exe} refine - --to 12 {cpu} -o - "
              f"| {exe} encode - -o piped.mp4 {cpu}")
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # see one_thread()
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout == b"piped.mp4\n"
    assert err.count(NOTICE) == 3 and "Traceback" not in err
    assert count_frames(tmp_path / "piped.mp4") == 9


# ---- determinism ------------------------------------------------------------------------------------------------

def test_same_seed_same_latents_other_seed_other_latents(chain, piped, tmp_path):
    blueprint = load(chain.b6)
    assert same_latents(from_bytes(piped.blueprint.out), blueprint)  # a second run, through a pipe
    other = tmp_path / "seed1.safetensors"
    ok(tempo("blueprint", PROMPT, "--frames", N, "--seed", 1, "--preset", "tiny-random", "-o", other, *CPU))
    assert load(other).header.seed == 1
    assert not any(torch.equal(x, y) for x, y in zip(load(other).chunks, blueprint.chunks))


def test_seed_minus_one_draws_a_seed_that_repeats_the_run(tmp_path):
    """``--seed -1`` (Wan's "random seed") draws a seed, says it on stderr and keeps it in the header; passing that
    seed gives the same latents again. refine draws its own instead of keeping the input's."""
    drawn = tmp_path / "drawn.safetensors"
    run = ok(tempo("blueprint", PROMPT, "--frames", 5, "--seed", -1, "--preset", "tiny-random", "-o", drawn, *CPU))
    seed = int(re.search(r"--seed -1: drew seed (\d+) \(pass --seed \1 to repeat", run.err)[1])
    assert load(drawn).header.seed == seed >= 0
    again = tmp_path / "again.safetensors"
    ok(tempo("blueprint", PROMPT, "--frames", 5, "--seed", seed, "--preset", "tiny-random", "-o", again, *CPU))
    assert same_latents(load(again), load(drawn))
    refined = tmp_path / "refined.safetensors"
    run = ok(tempo("refine", drawn, "--to", 12, "--seed", -1, "--quiet", "-o", refined, *CPU))
    assert "drew seed" not in run.err  # --quiet: the seed is in the header only
    assert load(refined).header.seed >= 0 and load(refined).header.seed != seed  # 1 in 2^31 to fail by chance


def test_rerunning_a_level_reproduces_it_exactly(chain, piped, tmp_path):
    again = tmp_path / "again.safetensors"
    ok(tempo("refine", chain.b6, "--to", 12, "-o", again, *CPU))
    first, second = load(chain.r12), load(again)
    assert same_latents(first, second)
    assert replace(second.header, created=first.header.created) == first.header
    assert same_latents(from_bytes(piped.refined12.out), first)  # and once more, through a pipe
    assert same_latents(from_bytes(piped.refined.out), load(chain.r24))
    # 6 -> 24 in one run equals 6 -> 12 -> 24 in two: each level draws its own noise stream
    direct = tmp_path / "direct.safetensors"
    ok(tempo("refine", chain.b6, "--to", 24, "-o", direct, *CPU))
    assert same_latents(load(direct), load(chain.r24))
    reseeded = tmp_path / "seed5.safetensors"
    ok(tempo("refine", chain.b6, "--to", 12, "--seed", 5, "-o", reseeded, *CPU))
    assert load(reseeded).header.seed == 5
    assert not any(torch.equal(x, y) for x, y in zip(load(reseeded).chunks, first.chunks))


# ---- continue ----------------------------------------------------------------------------------------------------

def test_continue_joins_without_repeating_or_skipping_a_frame(chain, tmp_path):
    """A 12 fps parent of 17 frames, 0.5 s of context (3 blueprint steps: 7 frames at 12 fps), 0.5 s more:
    the new clip's blueprint has 4*ceil((3 + 3)/4) + 1 = 9 frames, 17 at 12 fps; joined 17 + 17 - 7 = 27."""
    target = tmp_path / "continued.safetensors"
    new_prompt = "the dog runs to a lake"
    run = ok(tempo("continue", chain.r12, "--seconds", 0.5, "--context", "0.5s", "--prompt", new_prompt,
                   "-o", target, *CPU))
    assert run.lines == [str(target)] and NOTICE in run.err
    parent, joined = load(chain.r12), load(target)
    h = joined.header
    context, new = h.extra["segments"][-1]["context_frames"], h.extra["segments"][-1]["frames"]
    assert (context, new) == (7, 2 * N - 1)
    assert h.frames == parent.header.frames + new - context == 27
    assert (h.stage, h.fps, h.frame_interval, h.prompt) == ("continue", 12.0, 2, new_prompt)
    assert h.parent_sha256 == sha256(chain.r12)
    guidance = {"negative_prompt": h.negative_prompt, "guidance_scale": h.guidance_scale}
    assert h.extra["segments"] == [
        {"start": 0, "frames": 2 * N - 1, "prompt": PROMPT, **guidance, "seed": 0, "chunks": 2},
        {"start": 2 * N - 1 - context, "frames": new, "context_frames": context, "prompt": new_prompt, **guidance,
         "seed": 1, "chunks": 2}]
    assert len(h.chunks) == 4 and [c["start"] for c in h.chunks[2:]] == [10, 10 + N - 1]
    # inspect shows each segment and its own chunks, whose RoPE starts anew, not one list that seems to overlap
    shown = ok(tempo("inspect", target)).lines
    at = shown.index("segments  2, joined by tempo continue")
    assert shown[at + 1:at + 6] == [
        f"          1: frames 0-16, seed 0: {PROMPT}",
        f"          2: frames 10-26 (frames 10-16 the context), seed 1: {new_prompt}",
        "chunks    4 seamless, by segment",
        "          1: 0-8 (rope 0), 8-16 (rope 4)",
        "          2: 10-18 (rope 0), 18-26 (rope 4)"]
    assert all(torch.equal(a, b) for a, b in zip(joined.chunks, parent.chunks))  # the parent's latents, as they were

    old_video, joined_video = decoded(parent), decoded(joined)
    assert joined_video.shape[1] == 27
    assert torch.equal(joined_video[:, :parent.header.frames], old_video)  # the parent's frames are unchanged
    offset = h.extra["segments"][-1]["start"]
    clip_header = replace(h, frames=new, chunks=[{**c, "start": c["start"] - offset} for c in h.chunks[2:]])
    clip = decoded(LatentFile(clip_header, joined.chunks[2:], joined.prompt_embeds, joined.negative_embeds))
    assert torch.equal(joined_video[:, parent.header.frames:], clip[:, context:])  # then the clip past its context


def test_continue_a_video_file_with_a_prompt(b6_mp4, tmp_path):
    """A 9-frame 6 fps video, 0.5 s of context (3 steps: 4 frames), 1 s more: a 13-frame clip; 9 + 13 - 4 = 18."""
    target = tmp_path / "from-video.safetensors"
    run = ok(tempo("continue", b6_mp4, "--prompt", "a dog in deep snow", "--seconds", 1, "--context", "0.5s",
                   "--preset", "tiny-random", "-o", target, *CPU))
    assert run.lines == [str(target)]
    h = load(target).header
    assert (h.stage, h.fps, h.frames) == ("continue", 6.0, 18)
    assert h.extra["source_video"] == str(b6_mp4)
    assert [s["prompt"] for s in h.extra["segments"]] == ["a dog in deep snow", "a dog in deep snow"]
    assert h.extra["segments"][-1]["context_frames"] == 4


def test_a_video_tempo_wrote_keeps_its_header(chain, b6_mp4, tmp_path):
    """encode tags its video (and contact sheet) with the latent file's header: `tempo inspect` reads it there,
    and refining the video needs no --prompt or --preset, which come from it, as from the latent file."""
    from tempo_cli.latents import header_summary

    made = json.loads(json.dumps(header_summary(load(chain.b6).header)))
    assert json.loads(ok(tempo("inspect", "--json", b6_mp4)).out) == made
    sheet = tmp_path / "sheet.png"
    ok(tempo("encode", chain.b6, "--sheet", sheet, *CPU))
    assert json.loads(ok(tempo("inspect", "--json", sheet)).out) == made
    assert "a dog in snow" in ok(tempo("inspect", b6_mp4)).out.decode()
    target = tmp_path / "from-tagged-video.safetensors"
    run = ok(tempo("refine", b6_mp4, "--to", 12, "-o", target, *CPU))
    assert run.lines == [str(target)] and NOTICE in run.err  # tiny-random, the video's preset, not toy
    h = load(target).header
    assert (h.prompt, h.preset, h.seed, h.frames) == (PROMPT, "tiny-random", 0, 2 * N - 1)
    assert h.extra["source_video"] == str(b6_mp4)
    untagged = tmp_path / "untagged.mp4"
    ok(tempo("encode", chain.b6, "-o", untagged, "--no-metadata", *CPU))
    assert count_frames(untagged) == N and "comment" not in read_metadata(untagged)
    assert tempo("inspect", untagged).code == 1


def test_blueprint_redraws_a_video_from_the_strength_down(chain, b6_mp4, tmp_path):
    """--video: the level starts from the video's latents noised to --strength; its length by default. At
    strength 1 the start is pure noise, so the video is not used and the blueprint is the plain one."""
    redrawn, whole = tmp_path / "redrawn.safetensors", tmp_path / "whole.safetensors"
    run = ok(tempo("blueprint", PROMPT, "--video", b6_mp4, "--strength", 0.5, "--preset", "tiny-random",
                   "-o", redrawn, *CPU))
    assert run.lines == [str(redrawn)]
    h = load(redrawn).header
    assert (h.frames, h.fps, h.extra["video"], h.extra["strength"]) == (N, 6.0, str(b6_mp4), 0.5)
    assert not same_latents(load(redrawn), load(chain.b6))
    ok(tempo("blueprint", PROMPT, "--video", b6_mp4, "--strength", 1, "--frames", 5, "--preset", "tiny-random",
             "-o", whole, *CPU))
    plain = ok(tempo("blueprint", PROMPT, "--frames", 5, "--preset", "tiny-random", "-o", "-", *CPU))
    assert load(whole).header.frames == 5 and same_latents(load(whole), from_bytes(plain.out))


def test_guidance_scale_and_negative_prompt_flags_reach_the_sampler_and_the_headers(chain, tmp_path):
    negative = 'blurry: "low quality", #1'  # YAML-hostile on purpose: the flag is not a --set string
    b6, r12, more = tmp_path / "b6.safetensors", tmp_path / "r12.safetensors", tmp_path / "more.safetensors"
    ok(tempo("blueprint", PROMPT, "--frames", N, "--preset", "tiny-random", "--cfg", 2.5, "--negative-prompt",
             negative, "-o", b6, *CPU))
    made = load(b6)
    assert (made.header.guidance_scale, made.header.negative_prompt) == (2.5, negative)
    default = load(chain.b6)
    assert default.header.guidance_scale != 2.5 and not same_latents(made, default)
    assert not torch.equal(made.negative_embeds, default.negative_embeds)
    ok(tempo("refine", b6, "--to", 12, "--guidance-scale", 3, "-o", r12, *CPU))
    assert load(r12).header.guidance_scale == 3.0
    ok(tempo("continue", chain.b6, "--seconds", 0.5, "--context", "0.5s", "--negative-prompt", "dark", "-o", more,
             *CPU))
    h = load(more).header
    assert h.prompt == PROMPT and h.negative_prompt == "dark"  # same prompt, new negative: encoded again
    assert [s["negative_prompt"] for s in h.extra["segments"]] == [load(chain.b6).header.negative_prompt, "dark"]


def test_refining_with_guidance_a_blueprint_made_without_it_guides(chain, tmp_path):
    """A file made at guidance scale 1 keeps no negative embeddings; refining it guided must encode them, not run
    unguided under a header that says otherwise."""
    from tempo_cli.options import open_session
    from tempo_cli.pipeline import encode_negative

    b6, guided, plain = (tmp_path / f"{name}.safetensors" for name in ("b6", "guided", "plain"))
    ok(tempo("blueprint", PROMPT, "--frames", N, "--preset", "tiny-random", "--cfg", 1, "-o", b6, *CPU))
    assert load(b6).negative_embeds is None
    ok(tempo("refine", b6, "--to", 12, "--cfg", 3, "-o", guided, *CPU))
    ok(tempo("refine", b6, "--to", 12, "--cfg", 1, "-o", plain, *CPU))
    made, unguided = load(guided), load(plain)
    assert made.header.guidance_scale == 3.0 and not same_latents(made, unguided)
    assert made.negative_embeds is not None and unguided.negative_embeds is None
    # the same embeddings a guided blueprint keeps: its header's negative prompt (the preset's), encoded
    assert torch.allclose(made.negative_embeds, load(chain.b6).negative_embeds)
    session = open_session("tiny-random", None, None, "cpu", "fp32", quiet=True)
    empty = load(b6)
    assert torch.equal(encode_negative(session.store, "", empty.prompt_embeds), torch.zeros_like(empty.prompt_embeds))


def test_a_guidance_scale_per_level_guides_only_the_levels_that_ask(chain, tmp_path):
    per_level = ("--set", "sampler.guidance_scale=[1, 3, 3]")
    b6, plain6, r12 = (tmp_path / f"{name}.safetensors" for name in ("b6", "plain6", "r12"))
    ok(tempo("blueprint", PROMPT, "--frames", N, "--preset", "tiny-random", *per_level, "-o", b6, *CPU))
    ok(tempo("blueprint", PROMPT, "--frames", N, "--preset", "tiny-random", "--cfg", 1, "-o", plain6, *CPU))
    made = load(b6)
    assert made.header.guidance_scale == 1.0 and same_latents(made, load(plain6))  # the blueprint is unguided
    assert torch.equal(made.negative_embeds, load(chain.b6).negative_embeds)  # kept for the levels that guide
    ok(tempo("refine", b6, "--to", 12, *per_level, "-o", r12, *CPU))
    refined, unguided = load(r12), tmp_path / "u12.safetensors"
    assert refined.header.guidance_scale == 3.0
    ok(tempo("refine", b6, "--to", 12, "--cfg", 1, "-o", unguided, *CPU))
    assert not same_latents(refined, load(unguided))


def test_continue_through_a_pipe_keeps_the_prompt_schedule(piped):
    h = from_bytes(piped.continued.out).header
    assert (h.stage, h.frames, h.prompt) == ("continue", N + 13 - 4, PROMPT)  # no --prompt: the input's
    assert [(s["start"], s["prompt"], s["seed"]) for s in h.extra["segments"]] == [(0, PROMPT, 0), (5, PROMPT, 1)]


def test_context_anchors_sit_at_every_level_of_the_new_clip():
    from stages.continue_ import context_anchors

    context = torch.arange(7.0).view(1, 7, 1, 1).expand(3, 7, 2, 2)  # frame k holds the value k
    anchors = context_anchors(context, [4, 2])  # a 12 fps context of 7 frames, blueprint at 6 fps
    assert sorted(anchors[2]) == list(range(7)) and sorted(anchors[4]) == [0, 1, 2, 3]
    assert [anchors[4][p][0, 0, 0].item() for p in range(4)] == [0, 2, 4, 6]  # the same moments


# ---- generate -----------------------------------------------------------------------------------------------------

def test_generate_is_blueprint_refine_encode_in_one_process(chain, tmp_path):
    video, latents = tmp_path / "dog.mp4", tmp_path / "dog.safetensors"
    run = ok(tempo("generate", PROMPT, "--frames", N, "--preset", "tiny-random", "-o", video, "--latents", latents,
                   *CPU))
    assert run.lines == [str(latents), str(video)]
    assert NOTICE in run.err
    assert count_frames(video) == 4 * N - 3
    result = load(latents)
    assert (result.header.fps, result.header.frames, len(result.header.chunks)) == (24.0, 4 * N - 3, 4)
    assert same_latents(result, load(chain.r24))  # exactly what the stages give one by one
    tags = read_metadata(video)  # the video keeps the final latent file's header
    assert tags["title"] == PROMPT and json.loads(tags["comment"])["created"] == result.header.created


def test_generate_writes_a_webm_and_a_contact_sheet_as_encode_does(tmp_path):
    video, sheet = tmp_path / "dog.webm", tmp_path / "dog.png"
    run = ok(tempo("generate", PROMPT, "--frames", 5, "--preset", "tiny-random", "-o", video, "--sheet", sheet,
                   "-q", *CPU))
    assert run.lines == [str(video), str(sheet)] and count_frames(video) == 17
    assert json.loads(read_metadata(sheet)["comment"]) == json.loads(read_metadata(video)["comment"])
    assert Image.open(sheet).size[0] > 64  # frames side by side
    bad = tempo("generate", PROMPT, "--frames", 5, "--preset", "tiny-random", "-o", tmp_path / "x.mp4", "--sheet",
                tmp_path / "x.jpg", *CPU)
    assert bad.code == 2 and "must be a .png" in bad.err and not (tmp_path / "x.mp4").exists()  # before any work

