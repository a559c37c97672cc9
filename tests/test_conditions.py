"""Multi-mask conditions: the mask packing, and what each task conditions on (text, first frame, first and last
frame, keyframes, refinement from a layout, continuation context), through ``pipeline.chunk_anchors`` /
``level_conditions`` with tiny-random's VAE and through the blueprint and refine stages themselves."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from stages.blueprint import load_anchors, parse_keyframes
from tempo_cli import pipeline
from tempo_cli.cli import main
from tempo_cli.conditions import anchors_from_layout, condition_video, pack_mask
from tempo_cli.errors import UsageError
from tempo_cli.latents import load
from tempo_cli.plan import Level, make_plan, next_level

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

H = W = 64  # tiny-random's frame size
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


@pytest.fixture(scope="module")
def vae():
    from tempo_cli.presets import load_preset
    from tempo_cli.runtime import ModelStore

    return ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32).vae()


def image(path: Path, color) -> Path:
    Image.new("RGB", (80, 48), color).save(path)  # not 64x64: covered and centre-cropped to the frame
    return path


def as_frame(color) -> torch.Tensor:
    """A solid frame ``[3, H, W]`` in [-1, 1]."""
    return (torch.tensor(color, dtype=torch.float32) / 127.5 - 1)[:, None, None].expand(3, H, W)


def pixel_mask(frames: int, conditioned) -> torch.Tensor:
    mask = torch.zeros(frames)
    mask[list(conditioned)] = 1
    return mask


def mask_channels(y: torch.Tensor) -> torch.Tensor:
    """The 4 mask channels of a chunk's ``y [4 + z, F, h, w]`` as ``[4, F]``, checking they are constant in space."""
    mask = y[:4]
    assert torch.equal(mask, mask[..., :1, :1].expand_as(mask))
    return mask[..., 0, 0]


# ---- pack_mask -------------------------------------------------------------------------------------------------------

def test_pack_mask_latent_0_is_frame_0_four_times_then_groups_of_four():
    packed = pack_mask(torch.arange(13.0))  # pixel frame k holds the value k
    assert packed.shape == (4, 4)
    assert packed[:, 0].tolist() == [0, 0, 0, 0]
    for k in range(1, 4):
        assert packed[:, k].tolist() == list(range(4 * k - 3, 4 * k + 1))  # latent k <- frames 4k-3 .. 4k


def test_pack_mask_keeps_leading_dims():
    masks = torch.stack([pixel_mask(9, [0]), pixel_mask(9, [8])])  # [B, T]
    packed = pack_mask(masks)
    assert packed.shape == (2, 4, 3)
    assert packed[0].tolist() == [[1, 0, 0]] * 4
    assert packed[1].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_condition_video_places_frames_at_their_positions():
    video, mask = condition_video(9, H, W, {0: as_frame(RED), 6: as_frame(BLUE)})
    assert video.shape == (3, 9, H, W) and mask.tolist() == pixel_mask(9, [0, 6]).tolist()
    assert torch.equal(video[:, 0], as_frame(RED)) and torch.equal(video[:, 6], as_frame(BLUE))
    assert not video[:, [1, 2, 3, 4, 5, 7, 8]].any()
    with pytest.raises(ValueError, match="outside a 9-frame chunk"):
        condition_video(9, H, W, {9: as_frame(RED)})


# ---- blueprint tasks through the pipeline ----------------------------------------------------------------------------

def blueprint_level(frames: int) -> Level:
    return make_plan(frames, (4,), (1,), height=H, width=W).levels[0]


def test_text_to_video_has_a_zero_mask_and_a_zero_condition_video(vae):
    level = blueprint_level(9)
    assert pipeline.chunk_anchors(level, None, {}) == [{}]
    (y,) = pipeline.level_conditions(vae, level, None, {}, H, W)
    assert y.shape == (4 + 16, 3, H // 8, W // 8)
    assert not y[:4].any()
    with torch.inference_mode():
        zero = vae.encode(torch.zeros(1, 3, 9, H, W))[0]
    torch.testing.assert_close(y[4:], zero)  # the zero video, encoded as the release does


@pytest.mark.parametrize("task, anchors", [
    ("image-to-video", {0: RED}),
    ("first and last frame", {0: RED, 8: BLUE}),
    ("keyframes", {0: RED, 6: GREEN, 8: BLUE}),
])
def test_conditioned_frames_set_the_mask_and_the_condition_latents(vae, task, anchors):
    level = blueprint_level(9)
    frames = {p: as_frame(c) for p, c in anchors.items()}
    assert [sorted(slots) for slots in pipeline.chunk_anchors(level, None, frames)] == [sorted(anchors)]
    (y,) = pipeline.level_conditions(vae, level, None, frames, H, W)
    assert torch.equal(mask_channels(y), pack_mask(pixel_mask(9, anchors)))
    video, _ = condition_video(9, H, W, frames)
    with torch.inference_mode():
        expected = vae.encode(video[None])[0]
    torch.testing.assert_close(y[4:], expected)


def test_image_to_video_mask_is_latent_0_only():
    assert pack_mask(pixel_mask(9, [0])).tolist() == [[1, 0, 0]] * 4


def test_first_and_last_frame_mask():
    assert pack_mask(pixel_mask(9, [0, 8])).tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1]]


@pytest.mark.parametrize("spec, fps, frames, position, path", [
    ("1s=key.png", 6, 9, 6, "key.png"),  # round(t * fps)
    ("1.1s=key.png", 6, 9, 7, "key.png"),  # round(6.6)
    ("0.5s=key.png", 12, 9, 6, "key.png"),
    (" 1 s = key one.png ", 6, 9, 6, "key one.png"),
    ("12f=key.png", 6, 13, 12, "key.png"),  # a frame of this level
    ("0f=key.png", 6, 5, 0, "key.png"),
])
def test_keyframe_positions(spec, fps, frames, position, path):
    assert parse_keyframes([spec], fps, frames) == {position: Path(path)}


@pytest.mark.parametrize("spec", ["3s=key.png", "13f=key.png", "key.png", "1x=key.png", "-1s=key.png"])
def test_keyframes_outside_or_malformed_are_usage_errors(spec):
    with pytest.raises(UsageError):
        parse_keyframes([spec], 6, 13)


def test_images_are_covered_and_converted_to_frames(tmp_path):
    anchors = load_anchors({0: image(tmp_path / "red.png", RED), 4: image(tmp_path / "blue.png", BLUE)}, H, W)
    assert sorted(anchors) == [0, 4]
    for position, color in ((0, RED), (4, BLUE)):
        assert anchors[position].shape == (3, H, W)
        torch.testing.assert_close(anchors[position], as_frame(color), atol=2 / 127.5, rtol=0)


# ---- the same through the blueprint stage ----------------------------------------------------------------------------

@pytest.fixture
def conditions(monkeypatch):
    """Every call of ``pipeline.level_conditions`` (the stages import it when they run) with its result."""
    calls = []
    real = pipeline.level_conditions

    def recording(vae, level, coarse, anchors, height, width):
        y = real(vae, level, coarse, anchors, height, width)
        calls.append(SimpleNamespace(level=level, coarse=coarse, anchors=dict(anchors), y=y))
        return y

    monkeypatch.setattr(pipeline, "level_conditions", recording)
    return calls


def quietly(*args) -> None:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        code = main([str(a) for a in args])
    finally:
        err = sys.stderr.getvalue()
        sys.stdout, sys.stderr = saved
    assert code == 0, err


@pytest.mark.parametrize("options, positions", [
    ((), {}),
    (("--image", "first.png"), {0: "first.png"}),
    (("--image", "first.png", "--last-image", "last.png"), {0: "first.png", 8: "last.png"}),
    (("--keyframe", "1s=key.png", "--keyframe", "2f=last.png"), {2: "last.png", 6: "key.png"}),
    (("--image", "first.png", "--keyframe", "1s=key.png", "--last-image", "last.png"),
     {0: "first.png", 6: "key.png", 8: "last.png"}),
])
def test_blueprint_conditions_on_its_images_where_they_belong(tmp_path, monkeypatch, conditions, options, positions):
    monkeypatch.chdir(tmp_path)
    colors = {"first.png": RED, "key.png": GREEN, "last.png": BLUE}
    for name, color in colors.items():
        image(tmp_path / name, color)
    quietly("blueprint", "a dog", "--frames", 9, "--preset", "tiny-random", "--device", "cpu", "--dtype", "fp32",
            "--set", "sampler.steps=[1,1,1]", "-o", "out.safetensors", *options)
    header = load("out.safetensors").header
    assert header.extra["anchors"] == {str(p): name for p, name in positions.items()}
    (call,) = conditions
    assert call.coarse is None and sorted(call.anchors) == sorted(positions)
    for position, name in positions.items():
        torch.testing.assert_close(call.anchors[position], as_frame(colors[name]), atol=2 / 127.5, rtol=0)
    assert torch.equal(mask_channels(call.y[0]), pack_mask(pixel_mask(9, positions)))
    if not positions:
        assert not call.y[0][:4].any()


# ---- refinement: conditions from the layout --------------------------------------------------------------------

def coded(frames: int) -> torch.Tensor:
    """A coarse video ``[3, N, 1, 1]`` whose frame i holds the value i: anchors say which frame they are."""
    return torch.arange(float(frames)).view(1, frames, 1, 1).expand(3, frames, 1, 1)


def which(slots: dict) -> dict[int, int]:
    return {k: int(frame[0, 0, 0].item()) for k, frame in slots.items()}


def test_anchors_from_layout_take_the_source_frames():
    assert which(anchors_from_layout([0, -1, 1, -1, 2], coded(3))) == {0: 0, 2: 1, 4: 2}
    assert anchors_from_layout([-1, -1, -1], coded(3)) == {}


def test_seamless_chunks_anchor_every_coarse_frame_at_its_own_moment():
    level = make_plan(5, (4, 2), (1, 2), height=H, width=W).levels[1]  # 9 frames at 12 fps in 2 chunks
    slots = pipeline.chunk_anchors(level, coded(5), {})
    assert [which(s) for s in slots] == [{0: 0, 2: 1, 4: 2}, {0: 2, 2: 3, 4: 4}]  # frame 2 anchors both chunks


def test_reference_chunks_follow_the_releases_layout(reference):
    """For every case of condition_layouts.json: chunk_anchors puts coarse frame source_frame[k] at slot k."""
    for case in json.loads((reference / "condition_layouts.json").read_text())["layouts"]:
        coarse_level = Level(0, case["interval_from"], case["frames_in"], ())
        level = next_level(coarse_level, case["interval_to"], layout="reference")
        slots = pipeline.chunk_anchors(level, coded(case["frames_in"]), {})
        assert len(slots) == len(case["chunks"])
        for got, chunk in zip(slots, case["chunks"]):
            assert which(got) == {k: s for k, s in enumerate(chunk["source_frame"]) if s >= 0}
            assert sorted(got) == [k for k, m in enumerate(chunk["mask"]) if m]


def test_refined_level_mask_follows_the_layout(vae):
    level = make_plan(5, (4, 2), (1, 2), height=H, width=W).levels[1]
    coarse = torch.rand(3, 5, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ys = pipeline.level_conditions(vae, level, coarse, {}, H, W)
    assert len(ys) == 2
    for y, chunk in zip(ys, level.chunks):
        assert chunk.mask == (1, 0, 1, 0, 1)
        assert mask_channels(y).tolist() == [[1, 0], [1, 1], [1, 0], [1, 1]]  # latent 1 <- frames 1..4
        video, _ = condition_video(5, H, W, anchors_from_layout(chunk.source_frame, coarse))
        with torch.inference_mode():
            torch.testing.assert_close(y[4:], vae.encode(video[None])[0])


def test_extra_anchors_join_the_layout_and_win_where_both_fall():
    """Continuation context: frames at level positions, added to the layout's anchors."""
    level = make_plan(5, (4, 2), (1, 2), height=H, width=W).levels[1]
    context = {0: torch.full((3, 1, 1), -1.0), 1: torch.full((3, 1, 1), -2.0)}
    slots = pipeline.chunk_anchors(level, coded(5), context)
    assert which(slots[0]) == {0: -1, 1: -2, 2: 1, 4: 2}
    assert which(slots[1]) == {0: 2, 2: 3, 4: 4}


def test_refine_stage_conditions_on_the_decoded_coarser_level(tmp_path, monkeypatch, conditions):
    monkeypatch.chdir(tmp_path)
    quietly("blueprint", "a dog", "--frames", 5, "--preset", "tiny-random", "--device", "cpu", "--dtype", "fp32",
            "--set", "sampler.steps=[1,1,1]", "-o", "b6.safetensors")
    conditions.clear()
    quietly("refine", "b6.safetensors", "--to", 24, "--device", "cpu", "--dtype", "fp32",
            "--set", "sampler.steps=[1,1,1]", "-o", "r24.safetensors")
    from tempo_cli.presets import load_preset
    from tempo_cli.runtime import ModelStore

    store = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32)
    twelve, twenty_four = conditions
    assert (twelve.level.interval, len(twelve.level.chunks)) == (2, 2)
    assert torch.equal(twelve.coarse, pipeline.decode_file(store, load("b6.safetensors")))  # the blueprint, decoded
    assert (twenty_four.level.interval, len(twenty_four.level.chunks), twenty_four.coarse.shape[1]) == (1, 4, 9)
    for call in conditions:
        assert call.anchors == {}  # nothing but the layout
        for y, chunk in zip(call.y, call.level.chunks):
            assert torch.equal(mask_channels(y), pack_mask(torch.tensor(chunk.mask, dtype=torch.float32)))

