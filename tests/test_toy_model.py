"""The shipped toy model, judged against the toy world's ground truth with fixed seeds: its blueprints show the
prompted colour, shape and motion; a 30 s video refined to 24 fps stays the same world from its first second to
its last; and continuing it to 60 s with a new prompt holds together across the joins.

Two kinds of threshold. ``GUARD`` sits a little below what the shipped weights reach (figures printed with
``pytest -s`` and recorded in the README), so a retrained model that is worse fails. ``BARS`` are what the toy
model is meant to reach (issue 4). The bars the shipped weights reach are plain tests; one they did not yet would
be a strict xfail, which fails the day a model reaches it and then becomes a plain test.
``TEMPO_TOY_PRESET=DIR/preset.yaml pytest -s tests/test_toy_model.py`` prints a retrained model's figures and holds
it to the same thresholds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from stages import blueprint, continue_, encode, refine
from tempo_cli.evaluation import (adherence, adherence_summary, consistency, jump_limit, max_jump, prompt_set,
                                  track)
from tempo_cli.options import open_session
from tempo_cli.toyworld import nearest_colour, parse_caption

LONG_PROMPT = "a yellow ball bouncing on a dark blue background"
NEXT_PROMPT = "a yellow ball moving left on a dark blue background"


@pytest.fixture(scope="module")
def session():
    """The shipped toy model, or the preset named by ``TEMPO_TOY_PRESET`` (a retrained model's
    ``preset.yaml``, to judge it by the same figures)."""
    return open_session(os.environ.get("TEMPO_TOY_PRESET", "toy"), None, None, "cpu", None, quiet=True)


def test_the_toy_preset_is_the_default_and_says_what_it_is():
    from tempo_cli.options import DEFAULT_PRESET
    from tempo_cli.presets import load_preset, preset_notice

    preset = load_preset(DEFAULT_PRESET)
    assert preset.name == "toy" and not preset.weights.is_random
    notice = preset_notice(preset)
    assert "toy model" in notice and "synthetic" in notice and "tempomaster-14b" in notice


def test_generate_uses_the_toy_model_by_default(tmp_path, monkeypatch):
    from cli_runner import tempo
    from tempo_cli.video import count_frames

    monkeypatch.chdir(tmp_path)
    run = tempo("generate", "a red dog in snow", "--seconds", "1", "-o", "clip.mp4", "--device", "cpu")
    assert run.code == 0, run.err
    assert run.lines == ["clip.mp4"] and count_frames(tmp_path / "clip.mp4") == 33  # 9 frames at 6 fps, 4*9-3
    assert "toy model: trained on synthetic shapes" in run.err
    assert "does not know the word(s) 'dog', 'in', 'snow'" in run.err


def test_the_default_has_2x2_patches_and_the_4x4_model_runs_its_own_weights():
    """``toy`` has the 2x2-patch DiT; ``toy-4x4`` (the toy model shipped before it) loads its own DiT, text encoder
    and VAE (toy's encoder, with the decoder toy had before it learnt from toy's DiT) and draws the prompted object:
    a blueprint of a red ball shows a red object in most frames."""
    from tempo_cli.presets import load_preset

    assert load_preset("toy").dit.patch_size == (1, 2, 2)
    session = open_session("toy-4x4", None, None, "cpu", None, quiet=True)
    assert session.preset.dit.patch_size == (1, 4, 4) and not session.preset.weights.is_random
    assert session.preset.weights.vae == "toy/vae-4x4.safetensors"
    prompt = "a red ball standing still on a black background"
    judged = adherence(encode.run(session, blueprint.run(session, prompt, fps=6, seconds=2, seed=0)), prompt)
    assert judged.found >= 0.9 and judged.colour_share >= 0.75, judged


def test_the_shipped_weights_stay_under_30_mb_and_toy_guides_its_blueprints_by_shape():
    """Every weight file shipped under presets/toy/ (both toy models' and toy's shape classifier) takes under 30 MB
    in all; ``toy`` guides its blueprints by its classifier, and one --set turns that off: a red square's
    blueprint is then another, and the guided one still a red object's."""
    from tempo_cli.presets import find_weights, load_preset

    toy = load_preset("toy")
    folder = find_weights(toy)["dit"].parent
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) < 30e6
    assert find_weights(toy)["classifier"].parent == folder and toy.sampler.classifier_scale_at(0) > 0
    assert toy.sampler.classifier_scale_at(1) == toy.sampler.classifier_scale_at(2) == 0
    prompt = "a red square standing still on a black background"
    made = {}
    for overrides in ([], ["sampler.classifier_scale=[0, 0, 0]"]):
        session = open_session("toy", overrides, None, "cpu", None, quiet=True)
        made[bool(overrides)] = blueprint.run(session, prompt, fps=6, seconds=2, seed=0)
    assert not np.allclose(made[False].chunks[0].numpy(), made[True].chunks[0].numpy())
    judged = adherence(encode.run(session, made[False]), prompt)
    assert judged.found >= 0.9 and judged.colour_share >= 0.75, judged


def test_the_shape_judge_knows_the_shapes_the_toy_vae_draws(session):
    """The judge's shapes, checked on the toy VAE's own reconstructions of rendered 6 fps clips: the best any DiT on
    this VAE can draw. A still object's shape is right in nearly every frame, and most frames of every shape are
    right (moving ones less often: the VAE smears a fast square into a blob that no viewer would call a square).
    The judge's thresholds were set on such reconstructions and on rendered frames, never on DiT samples."""
    import torch

    from tempo_cli.toyworld import SHAPES, classify_shape, render, scene_from_caption
    from tempo_cli.training import to_video
    from tempo_cli.video import to_uint8_frames

    vae = session.store.vae()
    right = {shape: [] for shape in SHAPES}
    for shape in SHAPES:
        for i, (colour, motion, background) in enumerate([("red", "moving left", "black"),
                                                          ("white", "standing still", "gray"),
                                                          ("cyan", "bouncing", "dark blue"),
                                                          ("orange", "moving up", "dark green")]):
            prompt = f"a {colour} {shape} {motion} on a {background} background"
            clip = render(scene_from_caption(prompt, seed=i), 113)[::4]  # 29 frames at 6 fps
            with torch.no_grad():
                video = to_video(clip)[None].to(session.store.device)
                drawn = to_uint8_frames(vae.decode(vae.encode(video))[0].clamp(-1, 1).float().cpu())
            shapes = [classify_shape(m) for m in track(drawn, background).main if m is not None]
            if motion == "standing still":
                assert shapes.count(shape) >= 0.9 * len(shapes), prompt
            right[shape] += [s == shape for s in shapes]
    print({shape: round(float(np.mean(r)), 3) for shape, r in right.items()})  # 0.94, 0.655, 0.741
    assert all(np.mean(r) >= 0.6 for r in right.values())


# Blueprint adherence over prompt_set(24): mean share of frames whose main object has the prompted colour, the
# worst prompt's share, share of prompts whose shape most frames show, share of moving prompts that move the
# prompted way.
ADHERENCE_BARS = {"colour": 0.9, "worst colour": 0.5, "shape": 0.75, "motion": 0.8}
ADHERENCE_GUARD = {"colour": 0.88, "shape": 0.83}  # shipped: 0.927 (worst 0.55), 0.917 (22 of 24), 17 of 21 moving


@pytest.fixture(scope="module")
def adherence_figures(session) -> dict[str, float]:
    judged = []
    for prompt in prompt_set(24):
        latent_file = blueprint.run(session, prompt, fps=6, seconds=5, seed=0)
        judged.append(adherence(encode.run(session, latent_file), prompt))
    for j in judged:
        print(f"{j.prompt}: found {j.found:.2f} colour {j.colour_share:.2f} shape {j.shape_share:.2f} "
              f"motion {j.shown_motion!r}")
    figures = adherence_summary(judged)
    print(figures)
    return figures


def test_blueprints_follow_their_prompts_as_well_as_the_shipped_model(adherence_figures):
    for key, floor in ADHERENCE_GUARD.items():
        assert adherence_figures[key] >= floor, key


def test_blueprints_move_the_prompted_way(adherence_figures):
    assert adherence_figures["motion"] >= ADHERENCE_BARS["motion"]  # 17 of 21 at 0.810; 16 would fail


def test_blueprints_reach_the_colour_bar(adherence_figures):
    assert adherence_figures["colour"] >= ADHERENCE_BARS["colour"]


def test_blueprints_reach_the_worst_colour_and_shape_bars(adherence_figures):
    assert all(adherence_figures[key] >= ADHERENCE_BARS[key] for key in ("worst colour", "shape"))


@pytest.fixture(scope="module")
def thirty_seconds(session):
    latent_file = blueprint.run(session, LONG_PROMPT, fps=6, seconds=30, seed=1)
    return refine.run(session, latent_file, to_fps=24)


def long_figures(frames: np.ndarray, prompt: str) -> dict[str, float]:
    """A long video's figures (see :class:`tempo_cli.evaluation.Consistency`); colours: 1 when the main object has
    the prompted colour (nearest named) in both the first and the last second; jump: the largest frame-to-frame
    move over the largest the world allows."""
    judged = consistency(frames, 24, prompt)
    print(judged)
    colour = parse_caption(prompt)[0][0][0]
    return {"count": judged.count_share, "found": 1 - judged.missing / judged.frames,
            "colours": float(judged.colour_names == (colour, colour)), "colour drift": judged.colour_drift,
            "size drift": judged.size_drift, "jump": judged.max_jump / judged.jump_limit}


def join_figures(frames: np.ndarray, main: list, join: int, prompt: str) -> dict[str, float]:
    """Figures of the second either side of a join (frame ``join`` is the first new one), from the main objects
    ``main`` of ``frames``: share of those frames with an object, share of them with the prompted colour, change of
    mean size across the join (px), and the largest move near it over the world's limit."""
    before, after = main[join - 24:join], main[join:join + 24]
    present = [m for m in before + after if m is not None]
    colour = parse_caption(prompt)[0][0][0]
    sizes = [np.mean([m.size for m in side if m is not None] or [np.nan]) for side in (before, after)]
    figures = {"found": len(present) / 48, "colour": sum(nearest_colour(m.mean_rgb) == colour for m in present) / 48,
               "size change": float(abs(sizes[0] - sizes[1])),
               "jump": max_jump(main, at=range(join - 24, join + 24)) / jump_limit(prompt, 24, frames.shape[1])}
    print(f"join at frame {join}: {figures}")
    return figures


# 30 s at 24 fps: share of frames with exactly one object, share with an object, colour names kept, RGB drift of
# the main object's colour and px drift of its size from the first second to the last, largest jump / limit.
THIRTY_BARS = {"count": 0.95, "found": 0.99, "colours": 1.0, "colour drift": 40.0, "size drift": 3.0, "jump": 1.0}
# shipped, 2 threads (AMD EPYC, 12 steps on the finer levels): 1.0, 1.0, yellow -> yellow, 3.7, 1.54, 0.56 (1.76 px
# against 3.1)
# The joins of 30 s + 15 s + 15 s: the second either side of each join.
JOIN_BARS = {"found": 1.0, "colour": 1.0, "size change": 3.0, "jump": 1.0}
# shipped (same machine): join at 30 s 1.0, 1.0, 1.37, 0.51; at 45 s 1.0, 1.0, 0.04, 0.51
LOWER_IS_BETTER = {"colour drift", "size drift", "jump", "size change"}


def meets(figures: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The figures that miss their limits."""
    return [key for key, limit in limits.items()
            if not (figures[key] <= limit if key in LOWER_IS_BETTER else figures[key] >= limit)]


@pytest.fixture(scope="module")
def thirty_figures(session, thirty_seconds) -> dict[str, float]:
    frames = encode.run(session, thirty_seconds)
    assert len(frames) == 30 * 24 + 1
    return long_figures(frames, LONG_PROMPT)


@pytest.fixture(scope="module")
def join_figures_60(session, thirty_seconds) -> list[dict[str, float]]:
    """30 s, then two continuations of 15 s each with a new prompt, each conditioned on the last 5 s."""
    first = continue_.run(session, thirty_seconds, seconds=15, context=5, prompt=NEXT_PROMPT)
    joined = continue_.run(session, first, seconds=15, context=5)
    frames = encode.run(session, joined)
    assert len(frames) == 60 * 24 + 1
    main = track(frames, parse_caption(NEXT_PROMPT)[1]).main  # tracked once for both joins
    return [join_figures(frames, main, join, NEXT_PROMPT)
            for join in (thirty_seconds.header.frames, first.header.frames)]


def test_thirty_seconds_reach_the_consistency_bars(thirty_figures):
    assert meets(thirty_figures, THIRTY_BARS) == []


def test_continuations_to_sixty_seconds_reach_the_join_bars(join_figures_60):
    assert [meets(figures, JOIN_BARS) for figures in join_figures_60] == [[], []]
