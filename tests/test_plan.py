"""The plan: the released layout against condition_layouts.json, seamless properties, RoPE, join, errors, cost."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempo_cli.config import TEMPOMASTER_14B_DIT, DiTConfig
from tempo_cli.errors import ConfigError
from tempo_cli.plan import (
    LAYOUTS, Plan, condition_layout, default_chunks, estimate_cost, forward_flops, intervals_from_fps, join,
    lagged_steps, latent_frames, make_plan, max_seamless_chunks, plan_to_dict, reference_condition_layout,
)

INTERVALS = [(4, 2, 1), (4, 1), (4, 2), (2, 1), (8, 4, 2, 1), (8, 2, 1), (8, 1), (6, 3, 1), (6, 2), (12, 4, 2, 1)]


@pytest.fixture(scope="module")
def fixture_layouts(reference):
    return json.loads((reference / "condition_layouts.json").read_text())["layouts"]


# ---- the reference layout --------------------------------------------------------------------------------

def test_reference_layout_equals_every_fixture_case(fixture_layouts):
    assert len(fixture_layouts) >= 7
    for case in fixture_layouts:
        got = reference_condition_layout(case["frames_in"], case["interval_from"], case["interval_to"])
        assert got == case, (case["frames_in"], case["interval_from"], case["interval_to"])


def test_reference_plans_reproduce_fixture_cases_reached_from_a_blueprint(fixture_layouts):
    """Every case whose input a 4k+1 blueprint reaches appears, unchanged, as a level of a reference plan."""
    reached = 0
    for case in fixture_layouts:
        n, s_from, s_to = case["frames_in"], case["interval_from"], case["interval_to"]
        if s_from == 4 and n % 4 == 1:
            level = make_plan(n, (4, s_to), layout="reference").levels[1]
        elif s_from == 2 and n % 2 == 0 and (n // 2) % 4 == 1:
            level = make_plan(n // 2, (4, 2, 1), layout="reference").levels[2]
        else:
            continue
        reached += 1
        assert condition_layout(level) == case
    assert reached == 6  # all but frames_in=28, which is not 4k+1


def test_plan_to_dict_carries_the_fixture_layouts(fixture_layouts):
    data = plan_to_dict(make_plan(109, (4, 2, 1), layout="reference"))
    cases = {(c["frames_in"], c["interval_from"], c["interval_to"]): c for c in fixture_layouts}
    assert data["levels"][1]["condition_layout"] == cases[(109, 4, 2)]
    assert data["levels"][2]["condition_layout"] == cases[(218, 2, 1)]


def test_reference_quirks_are_reproduced():
    level = make_plan(13, (4, 1), layout="reference").levels[1]
    for prev, chunk in zip(level.chunks, level.chunks[1:]):
        # the first slot of every later chunk holds a copy of the previous chunk's last anchor ...
        assert chunk.mask[0] == 1 and chunk.source_frame[0] == prev.anchors[-1][1]
        # ... which is a different moment than the slot's own
        assert chunk.positions[0] * level.interval != chunk.source_frame[0] * level.interval * level.ratio
    padded = reference_condition_layout(28, 4, 2)["chunks"][-1]
    assert padded["source_frame"][-2:] == [-1, -1] and padded["mask"][-2:] == [0, 0]


def test_reference_rope_is_the_release_formula():
    """Chunk c, latent frame j: c * f * interval + j * interval (dit_tiny's `about`)."""
    for level in make_plan(109, (4, 2, 1), layout="reference").levels:
        for c, chunk in enumerate(level.chunks):
            f = chunk.latent_frames
            assert chunk.rope == tuple(c * f * level.interval + j * level.interval for j in range(f))


def test_reference_join_drops_padding_unless_asked():
    plan = make_plan(9, (4, 2), layout="reference")
    assert [c.frames for c in plan.levels[1].chunks] == [9, 9]
    level = make_plan(5, (4, 2, 1), layout="reference").levels[1]
    assert level.frames == 10
    labels = [list(c.positions) for c in level.chunks]
    assert join(level, labels) == list(range(level.frames))
    assert join(level, labels, keep_padding=True) == [p for c in level.chunks for p in c.positions]


@pytest.mark.parametrize("frames", [5, 9, 13, 29, 61, 109, 121, 201])
@pytest.mark.parametrize("intervals", [(4, 2, 1), (4, 1)])
def test_reference_never_pads_for_4k1_blueprints_at_6_12_24(frames, intervals):
    """So its levels chain exactly as the release's decoded outputs do (frames_in * ratio at every step)."""
    plan = make_plan(frames, intervals, layout="reference")
    for level in plan.levels[1:]:
        assert all(p is not None for c in level.chunks for p in c.positions)
        assert level.frames == level.frames_in * level.ratio


# ---- the seamless layout ---------------------------------------------------------------------------------

@st.composite
def seamless_plans(draw):
    intervals = draw(st.sampled_from(INTERVALS))
    frames = 4 * draw(st.integers(1, 60)) + 1
    counts = [1]
    frames_at = frames
    for coarse, fine in zip(intervals, intervals[1:]):
        ratio = coarse // fine
        frames_at = (frames_at - 1) * ratio + 1
        counts.append(draw(st.integers(1, min(max_seamless_chunks(frames_at, ratio), 12))))
    return make_plan(frames, intervals, counts)


@settings(max_examples=300, deadline=None)
@given(seamless_plans())
def test_seamless_properties(plan: Plan):
    assert plan.levels[0].frames == plan.frames and len(plan.levels[0].chunks) == 1
    for coarse, level in zip(plan.levels, plan.levels[1:]):
        r = level.ratio
        assert level.frames == (coarse.frames - 1) * r + 1
        assert len(level.chunks) == plan.chunks[level.index]
        assert level.chunks[-1].frames <= level.chunks[0].frames
        for chunk in level.chunks:
            assert chunk.frames % 4 == 1 and None not in chunk.positions
            assert chunk.positions == tuple(range(chunk.positions[0], chunk.positions[-1] + 1))
            for slot, (p, src, m) in enumerate(zip(chunk.positions, chunk.source_frame, chunk.mask)):
                # every coarse frame i sits at i * ratio and is conditioned; no other slot is
                assert m == (p % r == 0) and src == (p // r if m else -1)
                if m:  # an anchor is always the same moment, never a copy of another
                    assert coarse.time(src) == level.time(p)
        for a, b in zip(level.chunks, level.chunks[1:]):
            assert a.positions[-1] == b.positions[0] and a.mask[-1] == b.mask[0] == 1  # shared boundary anchor
        assert level.chunks[0].positions[0] == 0 and level.chunks[-1].positions[-1] == level.frames - 1
        assert join(level, [list(c.positions) for c in level.chunks]) == list(range(level.frames))
        # all frames of every coarser level are conditioned, at their own time
        anchored = {level.time(p) for c in level.chunks for p, m in zip(c.positions, c.mask) if m}
        assert all(set(upper.times) <= anchored for upper in plan.levels[:level.index])
    assert plan.final.frames == (plan.frames - 1) * plan.intervals[0] // plan.intervals[-1] + 1


@settings(max_examples=200, deadline=None)
@given(seamless_plans())
def test_seamless_rope_is_one_time_axis(plan: Plan):
    """Latent frame j sits at chunk slot 4j; its RoPE index is that frame's base time / 4, in every chunk."""
    for level in plan.levels:
        index_of_time: dict[int, int] = {}
        for chunk in level.chunks:
            assert chunk.rope == tuple(chunk.rope[0] + j * level.interval for j in range(chunk.latent_frames))
            for j, index in enumerate(chunk.rope):
                time = level.time(chunk.positions[4 * j])
                assert index * 4 == time
                assert index_of_time.setdefault(time, index) == index
        for a, b in zip(level.chunks, level.chunks[1:]):
            assert a.rope[-1] == b.rope[0]


@pytest.mark.parametrize("frames", [9, 29, 61, 109, 201])
def test_blueprint_facts(frames):
    plan = make_plan(frames)  # f(6,12,24) m(1,2,4)
    assert [lv.interval for lv in plan.levels] == [4, 2, 1]
    assert [lv.frames for lv in plan.levels] == [frames, 2 * frames - 1, 4 * frames - 3]
    assert [[c.frames for c in lv.chunks] for lv in plan.levels] == [[frames], [frames] * 2, [frames] * 4]
    assert [lv.time(lv.frames - 1) for lv in plan.levels] == [4 * (frames - 1)] * 3


def test_via_6_24():
    intervals = intervals_from_fps((6, 24))
    assert intervals == (4, 1) and intervals_from_fps([6, 12, 24]) == (4, 2, 1)
    plan = make_plan(29, intervals)
    assert plan.chunks == (1, 4) == default_chunks(intervals)
    final = plan.final
    assert final.frames == 4 * 29 - 3 and final.ratio == 4 and [c.frames for c in final.chunks] == [29] * 4
    assert all(c.source_frame[p] == (c.positions[p] // 4 if c.positions[p] % 4 == 0 else -1)
               for c in final.chunks for p in range(c.frames))
    assert make_plan(29, intervals, (1, 8)).chunks == (1, 8)


def test_uneven_chunks_are_balanced_with_shorter_last():
    level = make_plan(21, (4, 1), (1, 3)).final  # 81 frames, 20 units of 4 -> 7, 7, 6
    assert [c.frames for c in level.chunks] == [29, 29, 25]


def test_latent_frames():
    assert [latent_frames(t) for t in (1, 5, 9, 109)] == [1, 2, 3, 28]


# ---- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames, nearest", [(99, "97 or 101"), (100, "97 or 101"), (98, "97 or 101"),
                                             (6, "5 or 9"), (1, "5"), (0, "5"), (-7, "5")])
def test_bad_frames_name_the_nearest_valid(frames, nearest):
    with pytest.raises(ConfigError, match=f"frames must be 4k\\+1.*nearest valid: {nearest}$"):
        make_plan(frames)


@pytest.mark.parametrize("kwargs, message", [
    ({"intervals": ()}, "must not be empty"),
    ({"intervals": (1, 2)}, "coarse to fine"),
    ({"intervals": (4, 4)}, "coarse to fine"),
    ({"intervals": (4, 3)}, "dividing"),
    ({"intervals": (4, 0)}, "positive integers"),
    ({"intervals": (4, 2.0)}, "positive integers"),
    ({"chunks": (1, 2)}, "one count per level"),
    ({"chunks": (2, 2, 4)}, "start with 1"),
    ({"chunks": (1, 0, 4)}, "positive integers"),
    ({"chunks": (1, 2, 1000)}, "at most 108 chunks"),
    ({"layout": "tiled"}, "unknown layout"),
    ({"layout": "reference", "chunks": (1, 4, 8)}, "fixes chunks"),
    ({"height": 470}, "height must be a positive multiple of 16"),
    ({"width": 0}, "width must be"),
])
def test_bad_inputs_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(109, **kwargs)


def test_chunk_limit_is_exact():
    level_frames = 4 * 9 - 3
    most = max_seamless_chunks(level_frames, 2)
    assert make_plan(9, chunks=(1, 2, most)).final.chunks[-1].frames == 5
    with pytest.raises(ConfigError, match="at most"):
        make_plan(9, chunks=(1, 2, most + 1))
    with pytest.raises(ConfigError, match="at most 8 chunks"):  # ratio 8: spans are multiples of 8, not 4
        make_plan(9, (8, 1), (1, 9))


def test_other_errors():
    with pytest.raises(ConfigError, match="does not divide"):
        intervals_from_fps((7, 24))
    with pytest.raises(ConfigError, match="coarse to fine"):
        intervals_from_fps((24, 6))
    with pytest.raises(ConfigError, match="last chunk would be empty"):
        reference_condition_layout(2, 4, 1)  # the release would index past the end
    with pytest.raises(ConfigError, match="no coarser level"):
        condition_layout(make_plan(9).levels[0])
    with pytest.raises(ConfigError, match="join needs 2 chunks"):
        join(make_plan(9).levels[1], [[0]])
    with pytest.raises(ConfigError, match="one positive count per level"):
        estimate_cost(make_plan(9), TEMPOMASTER_14B_DIT, (50, 32))


# ---- data ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_plan_to_dict_is_json_with_condition_layouts(layout):
    plan = make_plan(29, layout=layout)
    data = json.loads(json.dumps(plan_to_dict(plan, estimate_cost(plan, TEMPOMASTER_14B_DIT, (50, 32, 32)))))
    assert data["layout"] == layout and data["final_frames"] == plan.final.frames
    assert data["levels"][0]["condition_layout"] is None
    for entry, level in zip(data["levels"][1:], plan.levels[1:]):
        layout_data = entry["condition_layout"]
        assert set(layout_data) == {"frames_in", "interval_from", "interval_to", "chunks"}
        assert layout_data["interval_to"] == level.interval and layout_data["frames_in"] == level.frames_in
        assert len(layout_data["chunks"]) == len(level.chunks)
        for chunk in layout_data["chunks"]:
            assert set(chunk) == {"source_frame", "mask"} and len(chunk["source_frame"]) == len(chunk["mask"])
        assert sum(b - a for _, a, b in entry["join"]) == level.frames
    assert data["levels"][1]["chunks"][0]["tokens"] == latent_frames(29) * 30 * 52
    assert data["cost"]["one_shot"]["max_tokens"] == latent_frames(plan.final.frames) * 30 * 52


def test_module_imports_without_torch():
    code = "import sys, tempo_cli.plan; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- cost ------------------------------------------------------------------------------------------------

def tiny_dit(**overrides) -> DiTConfig:
    fields = dict(dim=12, in_dim=36, ffn_dim=20, freq_dim=8, text_dim=10, out_dim=16, num_heads=2, num_layers=3)
    return DiTConfig(**{**fields, **overrides})


def test_forward_flops_by_hand():
    dit = tiny_dit()
    d, f, n, t, text = 12, 20, 3, 7, 5
    linear = (2 * t * (n * (6 * d * d + 2 * d * f) + 36 * 4 * d + d * 16 * 4)
              + 2 * text * (n * 2 * d * d + 10 * d + d * d))
    attention = n * (4 * t * t * d + 4 * t * text * d)
    assert forward_flops(dit, t, text) == linear + attention


def test_cost_counts_chunks_steps_and_guidance():
    plan = make_plan(29, height=64, width=96)  # 4 * 6 = 24 tokens per latent frame
    dit = tiny_dit()
    cost = estimate_cost(plan, dit, (10, 5, 5), guidance=True, text_len=8)
    no_cfg = estimate_cost(plan, dit, (10, 5, 5), guidance=False, text_len=8)
    assert cost.flops == 2 * no_cfg.flops
    assert [c.max_tokens for c in cost.levels] == [8 * 24] * 3
    assert cost.levels[2].flops == 4 * 5 * 2 * forward_flops(dit, 8 * 24, 8)
    assert cost.one_shot.max_tokens == latent_frames(113) * 24 and cost.one_shot.steps == 10
    # 4 chunks x 2 guidance passes; fp32 residual and modulated copy, then q, k, v, out (> 2 * ffn) in bf16
    assert cost.levels[2].activation_bytes == 4 * 2 * 8 * 24 * (2 * 12 * 4 + 4 * 12 * 2)
    assert cost.levels[2].chunk_activation_bytes == cost.levels[2].activation_bytes // 4
    assert cost.levels[2].attention_scores_bytes == 4 * 2 * 2 * (8 * 24) ** 2 * 2


def test_cost_counts_the_steps_that_lagging_frames_add():
    plan = make_plan(29, height=64, width=96)  # blueprint: one chunk of 8 latent frames
    dit = tiny_dit()
    plain = estimate_cost(plan, dit, (10, 5, 5), text_len=8)
    rolling = estimate_cost(plan, dit, (10, 5, 5), text_len=8, lag=(2.0, 0.0, 0.0))
    staggered = estimate_cost(plan, dit, (10, 5, 5), text_len=8, stagger=(0.5, 0.0, 0.0))
    assert rolling.levels[0].flops == plain.levels[0].flops * (10 + 7 * 2) // 10
    assert staggered.levels[0].flops == plain.levels[0].flops * (10 + 5) // 10
    assert rolling.levels[1:] == plain.levels[1:] == staggered.levels[1:]
    assert (plain.levels[0].lagged_steps, rolling.levels[0].lagged_steps, staggered.levels[0].lagged_steps) == (0, 24, 15)
    assert lagged_steps(10, 1, 0.5, 0.0) == lagged_steps(10, 1, 0.0, 2.0) == 10  # one frame: nothing lags
    with pytest.raises(ConfigError, match="one value per level"):
        estimate_cost(plan, dit, (10, 5, 5), lag=(2.0,))


@pytest.mark.parametrize("stagger, lag, waiting", [(0.0, 2.0, 0), (0.5, 0.0, 0), (0.0, 1.5, 2)])
def test_cost_of_leaving_waiting_frames_out_counts_the_frames_each_pass_takes(stagger, lag, waiting):
    from tempo_cli.plan import forward_flops, pass_frames
    from tempo_cli.sampling import rolling_schedule, staggered_schedule

    plan = make_plan(29, height=64, width=96)  # blueprint: one chunk of 8 latent frames
    dit = tiny_dit()
    _, following = rolling_schedule(10, 3.0, 8, lag) if lag else staggered_schedule(10, 3.0, 8, stagger)
    walk = pass_frames(10, 8, stagger, lag, waiting_frames=waiting)
    assert walk == [min(8, int((row < 1).sum()) + waiting) for row in following]  # as the sampler's passes
    per_latent = plan.tokens_per_latent_frame
    full = estimate_cost(plan, dit, (10, 5, 5), text_len=8, stagger=(stagger, 0, 0), lag=(lag, 0, 0))
    skipped = estimate_cost(plan, dit, (10, 5, 5), text_len=8, stagger=(stagger, 0, 0), lag=(lag, 0, 0),
                            waiting_frames=waiting)
    assert skipped.levels[0].flops == 2 * sum(forward_flops(dit, n * per_latent, 8) for n in walk)
    assert skipped.levels[0].flops < full.levels[0].flops
    assert skipped.levels[0].lagged_steps == full.levels[0].lagged_steps == len(walk)
    assert skipped.levels[1:] == full.levels[1:]  # levels without lag have nothing waiting
    assert pass_frames(10, 8, waiting_frames=0) == [8] * 10


@pytest.mark.parametrize("intervals, chunks", [((4, 2, 1), (1, 2, 4)), ((4, 2, 1), (1, 4, 8)), ((4, 1), (1, 4)),
                                               ((4, 1), (1, 8))])
def test_next_frame_rate_beats_one_shot_for_long_videos(intervals, chunks):
    speedups = []
    for frames in (109, 201, 401):
        plan = make_plan(frames, intervals, chunks)
        steps = (50,) + (32,) * (len(intervals) - 1)
        cost = estimate_cost(plan, TEMPOMASTER_14B_DIT, steps)
        assert cost.flops < cost.one_shot.flops
        assert max(c.chunk_activation_bytes for c in cost.levels) < cost.one_shot.activation_bytes / 3
        assert max(c.attention_scores_bytes for c in cost.levels) < cost.one_shot.attention_scores_bytes
        speedups.append(cost.speedup)
    assert speedups == sorted(speedups) and math.isfinite(speedups[-1])  # the longer, the bigger the saving
