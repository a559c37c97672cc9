"""The judges of generated toy-world videos, checked on the world's own renders: a rendered video follows its
caption and holds together, and the judges notice when a video does not."""

from __future__ import annotations

import numpy as np
import pytest

from tempo_cli.evaluation import adherence, adherence_summary, consistency, majority_colour, max_jump, max_speed, track
from tempo_cli.toyworld import BACKGROUNDS, FPS, MOTIONS, SHAPES, render, scene_from_caption

PROMPTS = [f"a {c} {s} {m} on a {b} background" for c, s, m, b in [
    ("red", "ball", "moving left", "black"), ("green", "square", "moving up", "gray"),
    ("blue", "triangle", "moving right", "dark green"), ("yellow", "ball", "moving down", "dark blue"),
    ("white", "square", "bouncing", "black"), ("purple", "triangle", "circling", "gray"),
    ("orange", "ball", "standing still", "dark blue"), ("cyan", "square", "moving left", "dark green")]]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_render_follows_its_caption(prompt):
    frames = render(scene_from_caption(prompt, seed=3), 61, fps=FPS / 4)  # 10 s at 6 fps, like a blueprint
    judged = adherence(frames, prompt)
    assert judged.found == 1 and judged.colour_share == 1
    assert judged.shape_ok and judged.shape_share >= 0.9
    assert judged.motion_ok, judged.shown_motion
    assert judged.jump_share == 0


def test_adherence_counts_the_jumps_of_frames_made_apart():
    frames = render(scene_from_caption(PROMPTS[0], seed=3), 31, fps=FPS / 4)  # a red ball moving left
    shuffled = frames[np.random.default_rng(0).permutation(31)]
    assert adherence(shuffled, PROMPTS[0]).jump_share > 0.5
    at_24 = render(scene_from_caption(PROMPTS[5], seed=3), 31)  # circling: fast, yet within the world's limits
    assert adherence(at_24, PROMPTS[5], fps=FPS).jump_share == 0


def test_adherence_notices_the_wrong_colour_shape_and_motion():
    frames = render(scene_from_caption(PROMPTS[0], seed=3), 31, fps=FPS / 4)  # a red ball moving left
    judged = adherence(frames, "a blue square moving right on a black background")
    assert judged.colour_share == 0 and not judged.shape_ok and not judged.motion_ok
    empty = np.zeros_like(frames)
    nothing = adherence(empty, PROMPTS[0])
    assert nothing.found == 0 and nothing.colour_share == 0 and nothing.shown_motion == "standing still"


def test_adherence_summary_counts_moving_prompts_apart():
    frames = render(scene_from_caption(PROMPTS[0], seed=3), 31, fps=FPS / 4)  # a red ball moving left
    right = adherence(frames, PROMPTS[0])
    wrong = adherence(frames, "a blue square moving right on a black background")
    still = adherence(frames, "a red ball standing still on a black background")  # moves: wrong, not counted
    figures = adherence_summary([right, wrong, still])
    assert figures == {"colour": 2 / 3, "worst colour": 0.0, "shape": 2 / 3, "motion": 0.5, "moving": 2, "jumps": 0.0}


def test_a_long_render_is_consistent():
    prompt = "a yellow triangle bouncing on a dark blue background"
    frames = render(scene_from_caption(prompt, seed=1), 30 * FPS + 1)
    judged = consistency(frames, FPS, prompt)
    assert judged.count_share == 1 and judged.missing == 0
    assert judged.colour_drift < 1 and judged.colour_names == ("yellow", "yellow") and judged.size_drift <= 1
    assert 0 < judged.max_jump <= judged.jump_limit


def test_consistency_notices_jumps_vanishing_and_drift():
    prompt = "a red ball moving right on a black background"
    frames = render(scene_from_caption(prompt, seed=2), 4 * FPS + 1)
    cut = np.concatenate([frames[:48], frames[48:][:, :, ::-1]])  # the world mirrored half-way: a jump
    assert consistency(cut, FPS, prompt).max_jump > consistency(frames, FPS, prompt).jump_limit
    gone = frames.copy()
    gone[10:20] = BACKGROUNDS["black"]
    judged = consistency(gone, FPS, prompt)
    assert judged.missing == 10 and judged.count_share == pytest.approx(1 - 10 / len(frames))
    grey = frames.copy()
    grey[-FPS:][grey[-FPS:].max(axis=-1) > 0] = (200, 200, 200)
    drifted = consistency(grey, FPS, prompt)
    assert drifted.colour_names == ("red", "white") and drifted.colour_drift > 100


def test_two_objects_are_counted():
    prompt = "a red ball moving left and a blue square moving up on a gray background"
    frames = render(scene_from_caption(prompt, seed=4), 2 * FPS + 1)
    found = track(frames, "gray")
    assert max(found.counts) == 2 and majority_colour(found.main) in ("red", "blue")
    assert consistency(frames, FPS, prompt).expected_objects == 2


def test_speed_limits_come_from_the_world():
    assert max_speed("standing still") == 0
    assert 0 < max_speed("moving left") == max_speed("bouncing") < max_speed("circling")
    assert max_speed("moving up", size=128) == 2 * max_speed("moving up")
    for motion in MOTIONS:
        for shape in SHAPES:
            prompt = f"a white {shape} {motion} on a black background"
            for seed in range(3):
                frames = render(scene_from_caption(prompt, seed), 3 * FPS)
                assert max_jump(track(frames, "black").main) <= max_speed(motion) / FPS + 2.0
