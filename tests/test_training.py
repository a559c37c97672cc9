"""Training: the clip layouts of both stages, the loss, and `tempo train` end to end on a tiny preset."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tempo_cli.cli import main
from tempo_cli.config import TrainConfig
from tempo_cli.errors import ConfigError, UsageError
from tempo_cli.models.dit import MultiMaskDiT
from tempo_cli.presets import load_preset
from tempo_cli import training

CFG = TrainConfig(stage1_steps=2, stage1_lr=1e-3, stage2_steps=2, stage2_lr=1e-3, batch_size=2, clip_frames=9)

TINY_TRAIN = """
extends: tiny-random
description: tiny-random with a train section, for tests
train:
  vae_steps: 2
  stage1_steps: 3
  stage1_lr: 1.0e-3
  stage2_steps: 3
  stage2_lr: 1.0e-3
  batch_size: 2
  clip_frames: 9
  warmup_steps: 1
  ema_decay: 0.9
  text_encoder_lr: 1.0e-4
  checkpoint_every: 2
"""


@pytest.fixture
def tiny_train(tmp_path, monkeypatch):
    """The preset ``tiny-train`` (TINY_TRAIN) in a presets folder on ``TEMPO_PRESETS``."""
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "tiny-train.yaml").write_text(TINY_TRAIN)
    monkeypatch.setenv("TEMPO_PRESETS", str(presets))


def test_stage1_layouts_condition_few_frames_at_one_rate():
    rng = np.random.default_rng(0)
    layouts = [training.stage1_layout(rng, CFG, 1) for _ in range(300)]
    assert {l.interval for l in layouts} == {1}
    assert all(l.frames in training.clip_lengths(CFG) and l.frames % 4 == 1 for l in layouts)
    assert all(len(l.anchors) <= max(1, int(0.15 * l.frames)) or l.anchors in ((0, l.frames - 1),) for l in layouts)
    kinds = {l.anchors for l in layouts if l.anchors in ((), (0,))}
    assert kinds == {(), (0,)}  # nothing conditioned and I2V both occur
    assert any(l.anchors == (0, l.frames - 1) for l in layouts)  # first and last


def test_stage2_layouts_condition_on_every_coarser_frame():
    rng = np.random.default_rng(1)
    layouts = [training.stage2_layout(rng, CFG, (4, 2, 1)) for _ in range(200)]
    assert {l.interval for l in layouts} == {4, 2, 1}
    for layout in layouts:
        if layout.interval == 4:
            assert layout.anchors == ()  # the blueprint level sees no frames
        else:
            assert layout.anchors == tuple(range(0, layout.frames, 2))  # every frame of the level above


def test_clip_lengths_double_up_to_the_longest_and_long_batches_are_smaller():
    cfg = TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, batch_size=16,
                      clip_frames=193, batch_latent_frames=128)
    lengths = training.clip_lengths(cfg)
    assert lengths == [5, 13, 29, 61, 125, 193]  # 2, 4, 8, 16, 32 and 49 latent frames
    assert [training.batch_size_for(cfg, n) for n in lengths] == [16, 16, 16, 8, 4, 2]
    weights = training.length_weights(lengths)
    assert weights.sum() == pytest.approx(1) and all(np.diff(weights) < 0)  # long clips are drawn less often
    rng = np.random.default_rng(0)
    drawn = [training.stage1_layout(rng, cfg, 1).frames for _ in range(3000)]
    assert set(drawn) == set(lengths) and drawn.count(5) > 3 * drawn.count(193)
    assert training.clip_lengths(CFG) == [5, 9]
    longer = TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, clip_frames=193,
                         min_clip_frames=20)
    assert training.clip_lengths(longer) == [29, 61, 125, 193]
    with pytest.raises(ConfigError, match="min_clip_frames"):
        TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, clip_frames=29,
                    min_clip_frames=61)


def test_length_power_draws_more_long_clips_beside_the_short_ones():
    lengths = [13, 29, 61, 125, 193]
    default, half, alike = (training.length_weights(lengths, p) for p in (1.0, 0.5, 0.0))
    assert default * np.asarray(lengths) == pytest.approx(np.full(5, default[0] * 13))  # as many frames each
    assert alike == pytest.approx(np.full(5, 0.2))  # as many clips each
    assert default[-1] < half[-1] < alike[-1] and default[0] > half[0] > alike[0]
    cfg = TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, clip_frames=193,
                      min_clip_frames=13, length_power=0)
    rng = np.random.default_rng(0)
    drawn = [training.stage2_layout(rng, cfg, [4, 2, 1]).frames for _ in range(2000)]
    assert min(drawn.count(n) for n in lengths) > 300  # about 400 of each
    with pytest.raises(ConfigError, match="length_power"):
        TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, length_power=-1)


def test_stage2_can_mix_in_multimask_tasks_and_weigh_its_levels():
    cfg = TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, clip_frames=29,
                      stage2_multimask=0.5, stage2_levels=(2, 1, 1))
    rng = np.random.default_rng(2)
    layouts = [training.stage2_layout(rng, cfg, (4, 2, 1)) for _ in range(2000)]
    levels = [layout.interval for layout in layouts]
    assert 0.42 < levels.count(4) / len(levels) < 0.58 and levels.count(2) > 0.2 * len(levels)
    blueprint = [layout for layout in layouts if layout.interval == 4]
    with_anchors = [layout for layout in blueprint if layout.anchors]
    assert 0.25 < len(with_anchors) / len(blueprint) < 0.5  # half get a task, of which some condition nothing
    assert any(layout.anchors == (0,) for layout in with_anchors)
    assert any(layout.anchors == tuple(range(len(layout.anchors))) and len(layout.anchors) > 1
               for layout in with_anchors)  # a leading context, as continuation gives
    for layout in layouts:
        if layout.interval != 4:  # the coarser frames are always there, whatever else is added
            ratio = 2
            assert set(range(0, layout.frames, ratio)) <= set(layout.anchors)


def test_prepare_encodes_batches_like_single_clips():
    from tempo_cli.datasets import ToyWorldSource
    from tempo_cli.runtime import ModelStore

    vae = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32).vae()
    source = ToyWorldSource(5)
    layouts = [training.ClipLayout(2, 5, ()), training.ClipLayout(2, 5, (0, 4)), training.ClipLayout(1, 5, ()),
               training.ClipLayout(4, 9, (0,))]
    data = training.prepare(source, vae, layouts, first_index=10)
    assert sorted(data) == [5, 9] and data[5].intervals.tolist() == [2, 2, 1]
    with torch.no_grad():
        for row, i in enumerate([0, 1, 2]):
            clip, caption = source.clip(10 + i, 4 * layouts[i].interval + 1)
            video = training.to_video(clip[::layouts[i].interval])[None]
            torch.testing.assert_close(data[5].targets[row].float(), vae.encode(video)[0], atol=0.05, rtol=0.02)
            assert data[5].captions[row] == caption
        empty = vae.encode(torch.zeros(1, 3, 5, 64, 64))[0]
        for row in (0, 2):  # nothing conditioned: the encoded zero video, and a zero mask
            torch.testing.assert_close(data[5].conditions[row, 4:].float(), empty, atol=0.05, rtol=0.02)
            assert data[5].conditions[row, :4].abs().sum() == 0
    assert data[5].conditions[1, :4, 0, 0, 0].float().tolist() == [1, 1, 1, 1]  # frame 0, packed 4 times
    assert data[5].conditions[1, :4, 1, 0, 0].float().tolist() == [0, 0, 0, 1]  # frame 4, the last of group 1
    clip, _ = source.clip(10, 5 * 2 - 1)
    focus = training.latent_focus(training.to_video(clip[::2])[None], 8, 4)[0]
    assert data[5].focus.shape == (3, 1, 2, 8, 8) and torch.equal(data[5].focus[0].float(), focus)


def test_prepare_with_shape_contrast_keeps_each_clip_less_its_shapes_swapped():
    from tempo_cli.datasets import ToyWorldSource
    from tempo_cli.runtime import ModelStore

    vae = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32).vae()
    source = ToyWorldSource(5)
    layouts = [training.ClipLayout(4, 5, ()), training.ClipLayout(2, 5, (0,)), training.ClipLayout(1, 9, ())]
    plain = training.prepare(source, vae, layouts, first_index=20)
    data = training.prepare(source, vae, layouts, first_index=20, shape_contrast=True)
    # sparing the objects: the same differences, left out of the cells that show some of a clip's object and
    # no more of it than of the swapped one
    spared = training.prepare(source, vae, layouts, first_index=20, shape_contrast=True, spare_objects=True)
    assert plain[5].shape_delta is None and plain[9].shape_delta is None
    with torch.no_grad():
        for frames, rows in ((5, [0, 1]), (9, [2])):
            assert data[frames].shape_delta.shape == data[frames].targets.shape
            torch.testing.assert_close(data[frames].targets, plain[frames].targets)  # the targets are unchanged
            for row, i in enumerate(rows):
                n = (layouts[i].frames - 1) * layouts[i].interval + 1
                video = training.to_video(source.clip(20 + i, n)[0][::layouts[i].interval])[None]
                swapped = training.to_video(source.swapped_clip(20 + i, n)[::layouts[i].interval])[None]
                delta = vae.encode(video)[0] - vae.encode(swapped)[0]
                torch.testing.assert_close(data[frames].shape_delta[row].float(), delta, atol=0.05, rtol=0.02)
                assert delta.abs().amax() > 0.05  # the shapes make a difference to the latents
                keep = training.contrast_cells(video, swapped, vae.config.spatial_factor,
                                               vae.config.temporal_factor)[0]
                assert 0 < keep.mean() < 1
                torch.testing.assert_close(spared[frames].shape_delta[row],
                                           data[frames].shape_delta[row] * keep.bfloat16())

    class Videos:  # a source of given videos (a folder's): nothing to swap the shapes of
        def clip(self, index, frames):
            return source.clip(index, frames)

    with pytest.raises(ConfigError, match="shape_focus need the toy world"):
        training.prepare(Videos(), vae, layouts, 0, shape_contrast=True)


def test_shape_contrast_moves_the_flow_target_not_the_input(tiny_train):
    torch.manual_seed(0)
    target, noise, t = torch.randn(2, 4, 2, 2, 2), torch.randn(2, 4, 2, 2, 2), torch.tensor([0.3, 0.7])
    exaggerate = torch.randn_like(target)
    seen = []

    class Recording(FixedVelocity):
        def forward(self, z_t, t, context, y, rope):
            seen.append(z_t)
            return self.v

    model = Recording()
    model.v = noise - (target + exaggerate)  # the flow towards the exaggerated clean latent
    flow = training.flow_matching_terms(model, target, None, None, None, t, noise, exaggerate=exaggerate).flow
    assert flow.item() == pytest.approx(0, abs=1e-12)
    tt = t.view(2, 1, 1, 1, 1)
    torch.testing.assert_close(seen[-1], (1 - tt) * target + tt * noise)  # made from the clip as it is
    model.v = noise - target
    flow = training.flow_matching_terms(model, target, None, None, None, t, noise, exaggerate=exaggerate).flow
    assert flow.item() == pytest.approx(exaggerate.square().mean().item(), rel=1e-5)
    with pytest.raises(ConfigError, match="train.shape_contrast must not be negative"):
        load_preset("tiny-train", ["train.shape_contrast=-1"])


def test_contrast_cells_spare_the_cells_where_the_own_object_is_no_larger():
    background, colour = -1.0, 0.5
    video = torch.full((1, 3, 5, 16, 16), background)  # mostly background: the median colour
    swapped = video.clone()
    video[:, :, :, 0:2, 0:3] = colour  # cell (0, 0): 6 own pixels a frame, 4 of the other's
    swapped[:, :, :, 0:2, 0:2] = colour
    video[:, :, :, 4:5, 0:2] = colour  # cell (1, 0): 2 own pixels a frame, 8 of the other's
    swapped[:, :, :, 4:6, 0:4] = colour
    swapped[:, :, :, 4:6, 4:8] = colour  # cell (1, 1): none of the own object, some of the other's
    video[:, :, 1:, 0:4, 4:8] = colour  # cell (0, 1): as much of each from frame 1 on
    swapped[:, :, 1:, 0:4, 4:8] = colour
    cells = training.contrast_cells(video, swapped, 4, 4)
    assert cells.shape == (1, 1, 2, 4, 4)
    assert cells[0, 0, :, 0, 0].tolist() == [1, 1]  # the own shape reaches beyond the other
    assert cells[0, 0, :, 1, 0].tolist() == [0, 0]  # the other's is larger: the contrast would fade this one
    assert cells[0, 0, :, 1, 1].tolist() == [1, 1]  # background here: the other shape is pushed away
    assert cells[0, 0, :, 0, 1].tolist() == [1, 0]  # frame 0 shows nothing there; frames 1-4 the same in both


def test_shape_cells_weigh_where_swapping_the_shapes_moves_the_latent(tiny_train):
    delta = torch.zeros(2, 4, 3, 2, 2)
    delta[0, :, 1, 0, 0] = torch.tensor([0.5, -0.5, 0.5, -0.5])  # moved by half a standard deviation
    delta[0, :2, 2, 1, 1] = 3.0  # moved far: capped at 1
    delta[1, 0, 0, 0, 1] = 1.0  # one channel of four: rms 0.5
    cells = training.shape_cells(delta.bfloat16())
    assert cells.shape == (2, 1, 3, 2, 2) and cells.dtype == torch.float32
    assert cells[0, 0, 1, 0, 0].item() == pytest.approx(0.5)
    assert cells[0, 0, 2, 1, 1].item() == 1.0
    assert cells[1, 0, 0, 0, 1].item() == pytest.approx(0.5)
    assert cells.sum().item() == pytest.approx(2.0)  # nothing else: the cells the shapes leave alone weigh 0
    with pytest.raises(ConfigError, match="train.shape_focus must not be negative"):
        load_preset("tiny-train", ["train.shape_focus=-1"])
    with pytest.raises(ConfigError, match="set one of them only"):
        load_preset("tiny-train", ["train.shape_focus=2", "train.shape_contrast_spare_objects=true"])


def test_latent_focus_marks_the_cells_that_show_an_object():
    video = torch.full((1, 3, 9, 16, 16), -1.0)
    video[:, :, 0, 1:3, 1:3] = 1.0  # frame 0: an object in the top-left cell
    video[:, :, 7, 12:14, 12:14] = 1.0  # frame 7 (latent frame 2): one in the bottom-right cell
    focus = training.latent_focus(video, 4, 4)
    assert focus.shape == (1, 1, 3, 4, 4)
    assert focus[0, 0, 0, 0, 0] == 1 and focus[0, 0, 0, 3, 3] == 0
    assert focus[0, 0, 1].sum() == 0  # frames 1-4 show nothing
    assert focus[0, 0, 2, 3, 3] == 1 and focus[0, 0, 2, 0, 0] == 0
    assert 0 < focus[0, 0, 2, 2, 2] <= 1  # the margin around the object reaches the next cell


def test_focus_weights_cover_objects_and_their_edges_on_both_sides():
    video = torch.full((1, 3, 1, 16, 16), -1.0)
    video[..., 6:9, 6:9] = 1.0  # a 3x3 object on a black frame
    weights = training.focus_weights(video, 10.0)[0, 0, 0]
    assert weights[7, 7] == 11 and weights[0, 0] == 1
    margin = training.FOCUS_MARGIN
    assert weights[7, 6 - margin] == 11 and weights[7, 8 + margin] == 11  # around the object too
    assert weights[7, 5 - margin] == 1
    assert torch.equal(training.focus_weights(video, 0.0), torch.ones_like(weights)[None, None, None])


def test_rope_positions_are_randomised_starts_plus_interval_steps():
    rng = torch.Generator().manual_seed(0)
    rope = training.rope_positions(rng, torch.tensor([4, 1, 2]), 5, t_max=64)
    steps = rope[:, 1:] - rope[:, :-1]
    assert steps.tolist() == [[4] * 4, [1] * 4, [2] * 4]
    starts = torch.cat([training.rope_positions(rng, torch.tensor([1] * 64), 2, 64)[:, 0] for _ in range(4)])
    assert 0 <= starts.min() and starts.max() <= 64 and len(set(starts.tolist())) > 20


class FixedVelocity(torch.nn.Module):
    """A stand-in DiT that returns the velocity ``v`` it is given, whatever its input."""

    def forward(self, z_t, t, context, y, rope):
        return self.v


def test_caption_contrast_asks_the_swapped_captions_velocity_to_miss_the_flow():
    torch.manual_seed(0)
    target, noise, t = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2), torch.tensor([0.3, 0.7, 0.5])
    flow = noise - target
    own_v, swap_v = flow + 0.1 * torch.randn_like(flow), flow + 0.1 * torch.randn_like(flow)
    swap_v[1] = flow[1] + 3.0  # sample 1's swapped caption already leads far from its flow

    class ByCaption(torch.nn.Module):  # the own velocity for context 0, the swapped one for context 1
        def forward(self, z_t, t, context, y, rope):
            return own_v if context.flatten().eq(0).all() else swap_v

    own_context, swapped_context = torch.zeros(3, 2, 8), torch.ones(3, 2, 8)
    swapped = torch.tensor([1.0, 1.0, 0.0])  # sample 2 has nothing to swap
    terms = training.flow_matching_terms(ByCaption(), target, None, own_context, None, t, noise,
                                         swapped_context=swapped_context, swapped=swapped, margin=0.25)
    own = (own_v - flow).square().flatten(1).mean(dim=1)
    miss = (swap_v - flow).square().flatten(1).mean(dim=1)
    assert terms.flow.item() == pytest.approx(own.mean().item(), rel=1e-5)
    gaps = torch.relu(1.25 * own - miss)
    assert gaps[1] == 0  # far enough already
    assert terms.caption.item() == pytest.approx(gaps[:2].mean().item(), rel=1e-5)
    assert terms.other is None
    none_swapped = training.flow_matching_terms(ByCaption(), target, None, own_context, None, t, noise,
                                                swapped_context=swapped_context, swapped=torch.zeros(3))
    assert none_swapped.caption is None  # no second pass for a batch with nothing to swap
    with pytest.raises(ConfigError, match="train.caption_contrast_margin must not be negative"):
        TrainConfig(stage1_steps=1, stage1_lr=1e-3, stage2_steps=1, stage2_lr=1e-3, caption_contrast_margin=-0.1)


def test_flow_matching_loss_is_zero_for_the_exact_velocity():
    target, noise = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 16, 2, 4, 4)
    oracle = FixedVelocity()
    oracle.v = noise - target
    loss = training.flow_matching_loss(oracle, target, None, None, None, torch.tensor([0.3, 0.8]), noise)
    assert loss.item() == 0
    oracle.v = torch.zeros_like(target)
    assert loss.item() < training.flow_matching_loss(oracle, target, None, None, None, torch.tensor([0.5]), noise)


def test_flow_matching_loss_weighs_latent_cells():
    target, noise, t = torch.zeros(1, 2, 1, 1, 2), torch.zeros(1, 2, 1, 1, 2), torch.tensor([0.5])
    model = FixedVelocity()
    model.v = torch.tensor([0.0, 2.0]).view(1, 1, 1, 1, 2).expand(1, 2, 1, 1, 2)  # wrong in the second cell only
    plain = training.flow_matching_loss(model, target, None, None, None, t, noise)
    same = training.flow_matching_loss(model, target, None, None, None, t, noise, torch.ones(1, 1, 1, 1, 2))
    assert plain.item() == same.item() == 2.0  # a uniform weight is the plain mean
    weighted = training.flow_matching_loss(model, target, None, None, None, t, noise,
                                           torch.tensor([1.0, 3.0]).view(1, 1, 1, 1, 2))
    assert weighted.item() == 3.0  # (1 * 0 + 3 * 4) / (1 + 3)


def test_contrastive_flow_matching_pushes_away_from_the_other_samples_flow(tiny_train):
    torch.manual_seed(0)
    target, noise, t = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2), torch.tensor([0.2, 0.5, 0.9])
    flow, model = noise - target, FixedVelocity()
    model.v = torch.randn_like(flow)
    plain = training.flow_matching_loss(model, target, None, None, None, t, noise)
    other = (model.v - flow[[2, 0, 1]]).square().mean()  # each sample against the flow of the one before it
    loss = training.flow_matching_loss(model, target, None, None, None, t, noise, contrastive=0.05)
    assert torch.allclose(loss, plain - 0.05 * other)
    terms = training.flow_matching_terms(model, target, None, None, None, t, noise, against_other=True)
    assert torch.allclose(terms[0], plain) and torch.allclose(terms[1], other)
    assert training.flow_matching_terms(model, target, None, None, None, t, noise)[1] is None  # not asked
    model.v = flow  # the own flow exactly: the loss is below zero by the other flows' distance
    assert training.flow_matching_loss(model, target, None, None, None, t, noise, contrastive=0.05).item() < 0
    # its minimum lies beyond the own flow, away from the other's: (flow - w * other flow) / (1 - w)
    v = torch.zeros_like(flow, requires_grad=True)
    model.forward = lambda *a: v
    optimizer = torch.optim.SGD([v], lr=30.0)  # a step of 0.94 of the way on 96 values
    for _ in range(200):
        optimizer.zero_grad()
        training.flow_matching_loss(model, target, None, None, None, t, noise, contrastive=0.25).backward()
        optimizer.step()
    assert torch.allclose(v.detach(), (flow - 0.25 * flow[[2, 0, 1]]) / 0.75, atol=1e-4)
    model.forward = lambda *a: flow[:1]  # a batch of one has no other sample: the plain loss
    assert training.flow_matching_loss(model, target[:1], None, None, None, t[:1], noise[:1], contrastive=0.5) == 0
    with pytest.raises(ConfigError, match="train.contrastive must be in"):
        load_preset("tiny-train", ["train.contrastive=1"])


def test_the_contrastive_term_can_keep_to_short_clips(tiny_train):
    """``train.contrastive_max_frames`` keeps the term to clips of at most that many frames (at their level's rate:
    4 (latent frames - 1) + 1); 0 puts it on every clip, and without ``train.contrastive`` no clip takes it."""
    every = load_preset("tiny-train", ["train.contrastive=0.05"]).train
    short = load_preset("tiny-train", ["train.contrastive=0.05", "train.contrastive_max_frames=61"]).train
    assert [training.contrasts(every, n) for n in (2, 16, 17, 49)] == [True] * 4
    assert [training.contrasts(short, n) for n in (2, 16, 17, 49)] == [True, True, False, False]  # 61, 65 frames
    assert not training.contrasts(load_preset("tiny-train", ["train.contrastive_max_frames=61"]).train, 2)
    with pytest.raises(ConfigError, match="train.contrastive_max_frames must be 0"):
        load_preset("tiny-train", ["train.contrastive_max_frames=-1"])


def test_timesteps_follow_the_shift():
    rng = torch.Generator().manual_seed(0)
    plain, shifted = training.sample_timesteps(rng, 4000, 1.0), training.sample_timesteps(rng, 4000, 3.0)
    assert 0 < plain.min() and plain.max() < 1
    assert abs(plain.mean() - 0.5) < 0.03 and shifted.mean() > plain.mean() + 0.1


def test_frame_timesteps_are_shared_or_drawn_per_latent_frame():
    rng = torch.Generator().manual_seed(0)
    shared = training.sample_frame_timesteps(rng, 64, 5, 3.0, 0.0)
    assert shared.shape == (64, 5) and torch.equal(shared, shared[:, :1].expand(64, 5))
    own = training.sample_frame_timesteps(rng, 64, 5, 3.0, 1.0)
    assert bool((own.std(dim=1) > 0).all()) and 0 < own.min() and own.max() < 1
    assert abs(own.mean() - shared.mean()) < 0.1  # the same shifted law either way
    half = training.sample_frame_timesteps(rng, 400, 5, 3.0, 0.5)
    apart = float((half.std(dim=1) > 0).float().mean())
    assert 0.4 < apart < 0.6


def test_rolling_frame_timesteps_rise_with_the_frame_index():
    rng = torch.Generator().manual_seed(0)
    t = training.sample_frame_timesteps(rng, 2000, 9, 3.0, 1.0, mode="rolling", most_lag=0.25)
    assert t.shape == (2000, 9) and 0 <= t.min() and t.max() < 1
    assert bool((t[:, 1:] >= t[:, :-1]).all())  # earlier frames are never noisier
    assert 0.1 < float((t == 0).float().mean()) < 0.6 and float(t[t > 0].min()) > 1e-3  # finished frames: exactly 0
    assert bool((t[:, 1:] > t[:, :-1]).any(dim=1).float().mean() > 0.95)  # and almost always some are cleaner
    clean_first, noise_last = float((t[:, 0] < 0.01).float().mean()), float((t[:, -1] > 0.99).float().mean())
    assert 0.1 < clean_first < 0.6 and 0.1 < noise_last < 0.6  # the walk starts and ends inside the clip
    per_sample = torch.tensor([0.0, 1.0]).repeat(100)  # one share per sample: the first of each pair shares a time
    mixed = training.sample_frame_timesteps(rng, 200, 9, 3.0, per_sample, mode="rolling")
    assert torch.equal(mixed[::2], mixed[::2, :1].expand(100, 9)) and bool((mixed[1::2].std(dim=1) > 0).all())
    with pytest.raises(ConfigError, match="frame noise mode"):
        training.sample_frame_timesteps(rng, 4, 9, 3.0, 1.0, mode="backwards")


def test_frame_noise_can_be_set_per_level():
    base = load_preset("toy-init")
    preset = dataclasses.replace(base, train=dataclasses.replace(base.train, frame_noise=(0.8, 0.0, 0.2)))
    assert preset.train.frame_noise == (0.8, 0.0, 0.2)
    torch.testing.assert_close(training.frame_noise_shares(preset, torch.tensor([4, 1, 2, 4])),
                               torch.tensor([0.8, 0.2, 0.0, 0.8]))
    one = dataclasses.replace(base, train=dataclasses.replace(base.train, frame_noise=0.5))
    torch.testing.assert_close(training.frame_noise_shares(one, torch.tensor([4, 1])), torch.tensor([0.5, 0.5]))
    with pytest.raises(ConfigError, match="frame_noise needs one share per level"):
        dataclasses.replace(base, train=dataclasses.replace(base.train, frame_noise=(0.8, 0.0)))
    for bad in (1.5, (0.5, -0.1, 0.0), ()):
        with pytest.raises(ConfigError, match="frame_noise"):
            dataclasses.replace(base.train, frame_noise=bad)
    with pytest.raises(ConfigError, match="frame_noise_mode"):
        dataclasses.replace(base.train, frame_noise_mode="sideways")


def test_flow_matching_loss_noises_each_latent_frame_at_its_own_time():
    class Echo(torch.nn.Module):  # returns what it is given, and keeps its times
        def forward(self, z_t, t, context, y, rope):
            self.t = t
            return z_t

    target, noise = torch.zeros(1, 1, 2, 1, 1), torch.ones(1, 1, 2, 1, 1)
    model = Echo()
    t = torch.tensor([[0.25, 0.75]])
    loss = training.flow_matching_loss(model, target, None, None, None, t, noise)
    # z_t = t per frame; the target velocity is 1: errors (0.75)^2 and (0.25)^2
    assert loss.item() == pytest.approx((0.75 ** 2 + 0.25 ** 2) / 2)
    assert torch.equal(model.t, t * 1000)


def test_latent_frames_given_clean_carry_no_loss():
    class Echo(torch.nn.Module):
        def forward(self, z_t, t, context, y, rope):
            return z_t

    target, noise = torch.zeros(1, 1, 3, 1, 1), torch.ones(1, 1, 3, 1, 1)
    t = torch.tensor([[0.0, 0.25, 1.0]])  # the first frame done, as rolling noise levels often start
    # the clean frame's error (1: the noise it cannot see) is left out; the others' are (0.75)^2 and 0
    loss = training.flow_matching_loss(Echo(), target, None, None, None, t, noise)
    assert loss.item() == pytest.approx(0.75 ** 2 / 2)
    weighted = training.flow_matching_loss(Echo(), target, None, None, None, t, noise,
                                           torch.tensor([5.0, 1.0, 3.0]).view(1, 1, 3, 1, 1))
    assert weighted.item() == pytest.approx(0.75 ** 2 / 4)  # (1 * 0.5625 + 3 * 0) / (1 + 3)
    everything_clean = torch.zeros(1, 3)
    assert training.flow_matching_loss(Echo(), target, None, None, None, everything_clean, noise).item() == 0


def test_learning_rate_warms_up_then_decays():
    lrs = [training.learning_rate(s, 1.0, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[99] < lrs[50] < lrs[10] and lrs[99] >= 0.1


def test_vae_training_paths_match_the_goldens(reference):
    """posterior() and reconstruct() (with gradients) compute what encode() and decode() do."""
    from safetensors.torch import load_file

    from tempo_cli.config import VAEConfig
    from tempo_cli.models.vae import CausalVideoVAE

    path = reference / "vae_tiny.safetensors"
    with safe_open(str(path), "pt") as f:
        official = json.loads(f.metadata()["config"])
    t = load_file(str(path))
    mean, std = t["latent_mean"].view(1, -1, 1, 1, 1), t["latent_std"].view(1, -1, 1, 1, 1)
    config = VAEConfig(official["dim"], official["z_dim"], official["dim_mult"], official["num_res_blocks"],
                       official["temperal_downsample"], t["latent_mean"].tolist(), t["latent_std"].tolist())
    vae = CausalVideoVAE(config)
    vae.load_state_dict({k.removeprefix("weights."): v for k, v in t.items() if k.startswith("weights.")})
    mu, logvar = vae.posterior(t["video"])
    assert mu.requires_grad and logvar.shape == mu.shape
    torch.testing.assert_close((mu - mean) / std, t["latents"], atol=5e-5, rtol=1e-5)
    recon = vae.reconstruct(t["latents"] * std + mean)
    torch.testing.assert_close(recon, t["decoded"], atol=5e-5, rtol=1e-5)  # the golden is unclamped


def test_dit_learns_a_batch(tmp_path):
    """A few optimiser steps on one batch lower the loss: gradients flow through DiT and conditions."""
    preset = load_preset("tiny-random")
    torch.manual_seed(0)
    dit = MultiMaskDiT(preset.dit)
    target, cond = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 20, 3, 4, 4)
    context = torch.randn(2, 5, preset.dit.text_dim)
    rope = torch.tensor([[0, 4, 8], [3, 5, 7]])
    t, noise = torch.tensor([0.4, 0.7]), torch.randn(2, 16, 3, 4, 4)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = training.flow_matching_loss(dit, target, cond, context, rope, t, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_tempo_train_runs_resumes_and_exports(tmp_path, tiny_train, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-train", "--data", "toyworld:3", "--out", str(out), "--cache", "8", "-q"]
    assert main(args + ["--phase", "vae"]) == 0
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["done"] == ["vae"] and len(state["latents_mean"]) == 16
    assert main(args + ["--prepare"]) == 0  # encodes both DiT phases' clips ahead, trains nothing
    caches = sorted(p.name for p in (out / "cache").iterdir())
    assert caches == ["stage1-rank0.safetensors", "stage2-rank0.safetensors"]
    capsys.readouterr()
    assert main(args[:-1]) == 0  # resumes: trains stage1 and stage2 only, on the prepared clips
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(out / "preset.yaml")
    assert "stage1: using the 8 encoded clips" in captured.err and "stage2: using the 8" in captured.err
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["done"] == ["vae", "stage1", "stage2"]
    trained = load_preset(str(out / "preset.yaml"))
    assert not trained.weights.is_random and trained.vae.latents_mean == tuple(state["latents_mean"])
    # the trained model generates through the normal stages, loading its files like official weights
    video = tmp_path / "clip.mp4"
    assert main(["generate", "a red ball moving left on a black background", "--preset", str(out / "preset.yaml"),
                 "--weights", str(out), "--frames", "5", "-o", str(video), "-q"]) == 0
    from tempo_cli.video import count_frames

    assert count_frames(video) == 17

    # --more: a finished phase trains on for a new cycle, from its trained weights
    before = load_file_tensors(out / "dit.safetensors")
    capsys.readouterr()
    assert main(args + ["--more", "2"]) == 2  # which phase?
    assert "--more extends one finished phase" in capsys.readouterr().err
    assert main(args + ["--phase", "vae", "--more", "2"]) == 2  # the DiT learnt this VAE's latents
    plain_terms, asked = training.flow_matching_terms, []

    exaggerated, weighed, swapped_contexts = [], [], []

    def recorded(*a, **kw):
        asked.append(a[-1])
        exaggerated.append(kw.get("exaggerate") is not None)
        weighed.append(a[-2])
        swapped_contexts.append(kw.get("swapped_context"))
        return plain_terms(*a, **kw)

    monkeypatch.setattr(training, "flow_matching_terms", recorded)
    assert main(args[:-1] + ["--phase", "stage2", "--more", "2", "--set", "train.contrastive=0.05"]) == 0
    assert asked == [True, True]  # train.contrastive reaches the loss of every step
    assert exaggerated == [False, False]  # no shape contrast asked for
    err = capsys.readouterr().err
    logged = re.search(r"stage2 step \d+: loss (\S+) \(smoothed \S+\) flow (\S+) other (\S+)", err)
    assert logged, err  # the log splits the loss into its terms
    loss, flow, other = map(float, logged.groups())
    assert loss == pytest.approx(flow - 0.05 * other, abs=2e-4)
    assert "trained vae, stage1, stage2" in err and "extending stage2 by 2 steps (round 1)" in err
    assert "resuming" not in err  # nothing was interrupted
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["done"] == ["vae", "stage1", "stage2"] and (state["step"], state["steps"], state["round"]) == (2, 2, 1)
    after = load_file_tensors(out / "dit.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # the decoder phase: the VAE's decoder trains on; its encoder, and so the DiT's latents, stay
    vae_before = load_file_tensors(out / "vae.safetensors")
    assert main(args + ["--phase", "decoder", "--set", "train.decoder_steps=2"]) == 0
    vae_after = load_file_tensors(out / "vae.safetensors")
    changed = {k for k in vae_before if not torch.equal(vae_before[k], vae_after[k])}
    assert changed and all(k.startswith(("decoder.", "conv2.")) for k in changed)
    assert load_preset(str(out / "preset.yaml")).vae.latents_mean == tuple(state["latents_mean"])
    capsys.readouterr()
    assert main(args[:-1] + ["--prepare"]) == 0
    err = capsys.readouterr().err
    assert "stage1: using the 8 encoded clips" in err and "stage2: using the 8" in err  # the latents are still valid
    # each --more round trains on new clips; the first round's are kept, the later rounds' replaced
    assert sorted(p.name for p in (out / "cache").iterdir()) == [
        "stage1-rank0.safetensors", "stage2-rank0-draw1.0.safetensors", "stage2-rank0.safetensors"]
    assert main(args + ["--phase", "stage2", "--more", "1"]) == 0
    assert sorted(p.name for p in (out / "cache").iterdir()) == [
        "stage1-rank0.safetensors", "stage2-rank0-draw2.0.safetensors", "stage2-rank0.safetensors"]
    assert cached_captions(out, "stage2-rank0-draw2.0") != cached_captions(out, "stage2-rank0")
    # shape contrast: the clips are encoded with their shapes swapped too, and every step's flow is moved by them
    exaggerated.clear()
    assert main(args + ["--phase", "stage2", "--more", "2", "--set", "train.shape_contrast=0.5"]) == 0
    assert exaggerated == [True, True]
    with safe_open(str(out / "cache" / "stage2-rank0-draw3.0.safetensors"), "pt") as f:
        assert f.metadata()["shape_contrast"] == "yes" and any(k.endswith(".shape_delta") for k in f.keys())
    assert main(args + ["--phase", "stage2", "--more", "1", "--set", "train.shape_contrast=0.5",
                        "--set", "train.shape_contrast_spare_objects=true"]) == 0
    with safe_open(str(out / "cache" / "stage2-rank0-draw4.0.safetensors"), "pt") as f:
        assert f.metadata()["shape_contrast"] == "spare-objects"  # its deltas are not those of a plain cache
    # shape focus: the same swapped clips, read as loss weights; the flow is left as it is
    exaggerated.clear()
    weighed.clear()
    assert main(args + ["--phase", "stage2", "--more", "1", "--set", "train.shape_focus=4"]) == 0
    assert exaggerated == [False]
    with safe_open(str(out / "cache" / "stage2-rank0-draw5.0.safetensors"), "pt") as f:
        assert f.metadata()["shape_contrast"] == "yes"  # the plain deltas, shared with train.shape_contrast
        assert any(k.endswith(".shape_delta") for k in f.keys())
    weights = weighed[-1]
    assert weights is not None and weights.min() >= 1 and weights.max() <= 5  # 1 + up to 4 where shapes decide
    assert weights.max() > weights.min() + 0.1  # the cells weigh differently
    # caption contrast: the captions with their shapes swapped reach the loss, and the log shows the term
    capsys.readouterr()
    assert main(args[:-1] + ["--phase", "stage2", "--more", "1", "--set", "train.caption_contrast=0.5"]) == 0
    assert swapped_contexts[-1] is not None and all(c is None for c in swapped_contexts[:-1])  # only when asked
    assert re.search(r"stage2 step \d+: loss \S+ \(smoothed \S+\) flow \S+ caption \S+",
                     " ".join(capsys.readouterr().err.split()))
    # the contrastive term kept to short clips: to those of at most 1 frame, none
    asked.clear()
    assert main(args[:-1] + ["--phase", "stage2", "--more", "2", "--set", "train.contrastive=0.05",
                             "--set", "train.contrastive_max_frames=1"]) == 0
    assert asked == [False, False]
    # another length_power draws other clip lengths: the first round's clips are encoded anew
    capsys.readouterr()
    assert main(args[:-1] + ["--prepare", "--set", "train.length_power=0"]) == 0
    err = capsys.readouterr().err
    assert "stage2: encoding 8 clips" in err and "using the 8" not in err
    with safe_open(str(out / "cache" / "stage2-rank0.safetensors"), "pt") as f:
        assert f.metadata()["length_power"] == "0.0"


def cached_captions(out, name: str) -> list[str]:
    with safe_open(str(out / "cache" / f"{name}.safetensors"), "pt") as f:
        return sorted(c for group in json.loads(f.metadata()["captions"]).values() for c in group)


def test_cache_refresh_brings_new_clips_every_so_many_steps(tmp_path, tiny_train, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-train", "--data", "toyworld:3", "--out", str(out), "--cache", "6",
            "--init", "tiny-random", "--phase", "stage2", "--set", "train.stage2_steps=5",
            "--set", "train.cache_refresh=2"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "stage2: 6 new clips (draw0.1)" in err and "stage2: 6 new clips (draw0.2)" in err  # at steps 2 and 4
    # the first draw stays (a later run may reuse it), the last is kept for a resume, those between are deleted
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["stage2-rank0-draw0.2.safetensors",
                                                                 "stage2-rank0.safetensors"]
    assert cached_captions(out, "stage2-rank0-draw0.2") != cached_captions(out, "stage2-rank0")


def test_the_decoder_phase_can_learn_from_the_dits_own_latents(tmp_path, tiny_train, capsys, monkeypatch):
    """``train.decoder_dit_share``: the decoder trains on latents the run's DiT denoised from noised clips, made
    once and kept in the cache; the encoder, and with it the latents the DiT knows, stays as it was."""
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-train", "--data", "toyworld:3", "--out", str(out), "--cache", "4", "-q",
            "--phase", "decoder", "--set", "train.decoder_steps=2", "--set", "train.decoder_dit_share=1",
            "--set", "train.decoder_dit_pairs=3", "--set", "train.decoder_dit_frames=9"]
    decoded, plain = [], training.decoder_loss

    def recorded(vae, latents, video, focus=0.0):
        decoded.append((tuple(latents.shape), tuple(video.shape)))
        return plain(vae, latents, video, focus)

    monkeypatch.setattr(training, "decoder_loss", recorded)
    assert main(args + ["--init", "tiny-random"]) == 0
    assert [(l[0], l[2], v[2]) for l, v in decoded] == [(2, 3, 9)] * 2  # every step: 2 of the pairs
    pairs = load_file_tensors(out / "cache" / "decoder-pairs-rank0.safetensors")
    assert pairs["latents"].shape[:3] == (3, 16, 3) and pairs["clips"].shape == (3, 9, 64, 64, 3)
    # the DiT's latents, not the encoder's: denoised from the clip noised half way or more
    from tempo_cli.runtime import ModelStore

    vae = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32).vae()
    with torch.no_grad():
        encoded = vae.encode(torch.stack([training.to_video(c.numpy()) for c in pairs["clips"]]))
    assert not torch.allclose(pairs["latents"].float(), encoded, atol=0.1)
    start = vae.state_dict()
    trained = {k[len("model.vae."):]: v for k, v in load_file_tensors(out / "checkpoint.safetensors").items()
               if k.startswith("model.vae.")}
    changed = {k for k in trained if not torch.equal(trained[k].float(), start[k].float())}
    assert changed and all(k.startswith(("decoder.", "conv2.")) for k in changed)
    capsys.readouterr()
    assert main(args[:9] + args[10:] + ["--more", "1"]) == 0  # logs, not -q
    assert "decoder: using the DiT's latents of 3 clips" in " ".join(capsys.readouterr().err.split())
    for bad, message in (("train.decoder_dit_share=1.5", "is a share in"), ("train.decoder_dit_pairs=0", "at least 1"),
                         ("train.decoder_dit_strength=[0.9, 0.5]", "low <= high"),
                         ("train.decoder_dit_frames=8", "4k\\+1")):
        with pytest.raises(ConfigError, match=message):
            load_preset("tiny-train", [bad])


def test_fingerprints_hash_each_tensors_own_bytes():
    """A float32 model's fingerprint is the one caches were keyed by before (its values' bytes); a bf16 model is
    hashed as it is, not widened, and any changed weight changes the fingerprint."""
    import hashlib

    from tempo_cli.trainer import _fingerprint

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        before.update(name.encode())
        before.update(value.detach().float().numpy().tobytes())
    assert _fingerprint(model) == before.hexdigest()
    half = _fingerprint(model.to(torch.bfloat16))
    assert half != before.hexdigest() and half == _fingerprint(model)
    with torch.no_grad():
        model[1].bias[2] += 1
    assert _fingerprint(model) != half
    assert _fingerprint(model, ("0.",)) == _fingerprint(torch.nn.Sequential(model[0]), ("0.",))


def test_cached_decoder_pairs_are_keyed_by_the_sampler_settings_that_differ_from_the_defaults():
    """A sampler setting added later with a default that changes nothing leaves the key, so the cache, as it was."""
    from tempo_cli.pipeline import LevelSampling
    from tempo_cli.trainer import _changed_fields

    euler = LevelSampling(24, 5.0, "cfg", 4.0, noise_correlation=0.9)
    assert json.loads(_changed_fields(euler)) == {"steps": 24, "shift": 5.0, "guidance": "cfg",
                                                   "guidance_scale": 4.0, "noise_correlation": 0.9}
    stochastic = dataclasses.replace(euler, eta=0.7, eta_window=(0.1, 0.8))
    assert json.loads(_changed_fields(stochastic))["eta_window"] == [0.1, 0.8]
    assert _changed_fields(dataclasses.replace(stochastic, eta=0.0, eta_window=(0.0, 1.0))) == _changed_fields(euler)


def test_export_writes_a_stopped_runs_checkpoint_as_a_preset_with_its_ema_weights(tmp_path, tiny_train, capsys,
                                                                                   monkeypatch):
    from tempo_cli.trainer import Trainer

    out, snapshot = tmp_path / "run", tmp_path / "snapshot"
    args = ["train", "--preset", "tiny-train", "--data", "toyworld:3", "--out", str(out), "--cache", "6"]
    assert main(args + ["--export", str(snapshot)]) == 2  # nothing trained yet
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(args + ["--init", "tiny-random", "--export", str(snapshot)]) == 2
    assert "does not go with" in capsys.readouterr().err

    def stop(self, phase, step, ema=None):  # the run is stopped at step 2 of 4, just after its checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "write_sample", stop)
    stage2 = ["--init", "tiny-random", "--phase", "stage2", "--set", "train.stage2_steps=4",
              "--set", "train.sample_every=2"]
    assert main(args + stage2) == 130
    capsys.readouterr()
    assert main(args + ["--set", "train.stage2_steps=9", "--export", str(snapshot)]) == 0  # the run's length counts
    captured = capsys.readouterr()
    assert captured.out.strip() == str(snapshot / "preset.yaml")
    assert "phases: vae; stage2 at step 2 of 4, EMA weights" in captured.err  # --init took the VAE over
    checkpoint = load_file_tensors(out / "checkpoint.safetensors")
    ema = {k[len("ema."):]: v for k, v in checkpoint.items() if k.startswith("ema.")}
    trained = {k[len("model.dit."):]: v for k, v in checkpoint.items() if k.startswith("model.dit.")}
    exported = load_file_tensors(snapshot / "dit.safetensors")
    assert ema and all(torch.equal(exported[k], v) for k, v in ema.items())
    assert any(not torch.equal(exported[k], trained[k]) for k in ema)  # not the training weights
    preset = load_preset(str(snapshot / "preset.yaml"))
    assert "stage2 at step 2 of 4, EMA weights" in preset.description
    assert preset.description.count("Trained by tempo train") == 1
    assert main(["generate", "a red ball moving left on a black background", "--preset", str(snapshot / "preset.yaml"),
                 "--frames", "5", "-o", str(tmp_path / "clip.mp4"), "-q"]) == 0
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:  # the run itself is left as it was
        assert json.loads(f.metadata()["state"])["step"] == 2


def test_export_can_average_the_run_with_a_trained_preset(tmp_path, tiny_train, capsys):
    from tempo_cli.datasets import open_source
    from tempo_cli.models.text_encoder import native_key
    from tempo_cli.pipeline import Progress
    from tempo_cli.runtime import ModelStore
    from tempo_cli.trainer import Trainer

    out, soup = tmp_path / "run", tmp_path / "soup"
    args = ["train", "--preset", "tiny-train", "--data", "toyworld:3", "--out", str(out), "--cache", "4"]
    assert main(args + ["--init", "tiny-random", "--phase", "stage2", "--set", "train.stage2_steps=2",
                        "--set", "train.stage2_lr=1e-2"]) == 0
    capsys.readouterr()
    assert main(args + ["--average", "tiny-random"]) == 2  # only with --export
    assert "--average goes with --export" in capsys.readouterr().err
    assert main(args + ["--export", str(soup), "--average", "tiny-random", "--average-weight", "1"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(args + ["--export", str(soup), "--average", "tiny-random", "--average-weight", "0.25"]) == 0
    assert "averaged with tiny-random's (weight 0.25 of tiny-random)" in " ".join(capsys.readouterr().err.split())
    other = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32)
    text = {native_key(k): v for k, v in other.text_encoder()[0].model.state_dict().items() if native_key(k)}
    for name, theirs in (("dit", other.dit().state_dict()), ("text_encoder", text)):
        own, averaged = load_file_tensors(out / f"{name}.safetensors"), load_file_tensors(soup / f"{name}.safetensors")
        moved = [k for k in own if not torch.equal(own[k], theirs[k])]
        assert moved  # the run trained away from where it started
        assert all(torch.allclose(averaged[k], own[k] + 0.25 * (theirs[k] - own[k]), atol=1e-6) for k in own)
    assert all(torch.equal(v, load_file_tensors(out / "vae.safetensors")[k])
               for k, v in load_file_tensors(soup / "vae.safetensors").items())  # the VAE as it was
    assert "averaged with tiny-random" in load_preset(str(soup / "preset.yaml")).description
    by_path = str(out / "preset.yaml")  # a run's own export, named as given, not after its file ("preset")
    assert main(args + ["--export", str(tmp_path / "same"), "--average", by_path]) == 0
    assert f"averaged with {by_path}'s" in " ".join(capsys.readouterr().err.split())
    assert main(["generate", "a red ball moving left on a black background", "--preset", str(soup / "preset.yaml"),
                 "--frames", "5", "-o", str(tmp_path / "clip.mp4"), "-q"]) == 0

    trainer = Trainer(load_preset("tiny-train"), out, open_source("toyworld:3", load_preset("tiny-train")),
                      device=torch.device("cpu"), progress=Progress())
    trainer.load_checkpoint(announce=False)
    random = load_preset("tiny-random")
    for unlike, why in ((dataclasses.replace(random, vae=dataclasses.replace(
                             random.vae, latents_mean=tuple(m + 1 for m in random.vae.latents_mean))), "VAE"),
                        (dataclasses.replace(random, dit=dataclasses.replace(random.dit, ffn_dim=64)), "DiT")):
        with pytest.raises(UsageError, match=f"its {why}"):
            trainer.average_with(unlike)


def load_file_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_dit_samples_use_the_ema_weights_and_leave_the_training_weights(tmp_path, tiny_train):
    from tempo_cli.datasets import open_source
    from tempo_cli.pipeline import Progress
    from tempo_cli.trainer import Trainer
    from tempo_cli.video import read_video

    preset = load_preset("tiny-train")
    trainer = Trainer(preset, tmp_path / "run", open_source("toyworld:3", preset), device=torch.device("cpu"),
                      progress=Progress())
    weights = {k: v.clone() for k, v in trainer.dit.state_dict().items()}
    plain = read_video(trainer.write_sample("stage1", 1))[0]
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()}
    with_ema = read_video(trainer.write_sample("stage1", 2, ema))[0]
    assert all(torch.equal(v, trainer.dit.state_dict()[k]) for k, v in weights.items())
    assert trainer.dit.training and not np.array_equal(plain, with_ema)
    assert np.array_equal(plain, read_video(trainer.write_sample("stage1", 3))[0])  # the same weights again


def test_init_starts_a_new_run_from_the_matching_networks_of_a_trained_preset(tmp_path, tiny_train, capsys):
    from tempo_cli.runtime import ModelStore

    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-train", "--set", "dit.ffn_dim=64", "--data", "toyworld:3", "--out", str(out),
            "--cache", "4", "--phase", "stage1", "--set", "train.stage1_steps=1"]
    assert main(args + ["--init", "tiny-random"]) == 0
    err = capsys.readouterr().err
    assert "starting from tiny-random's vae, text_encoder (the VAE phase counts as done)" in err
    assert "trained vae" in err and "resuming" not in err
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["done"] == ["vae", "stage1"]
    trained = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32)
    exported = load_file_tensors(out / "vae.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in trained.vae().state_dict().items())  # taken as it was
    assert main(args + ["--init", "tiny-random"]) == 2  # a run is there already
    assert "--init starts a new run" in capsys.readouterr().err


def test_init_takes_a_dit_over_to_a_new_prediction_target(tmp_path, tiny_train, capsys):
    from tempo_cli.runtime import ModelStore

    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny-train", "--set", "dit.prediction=sample", "--data", "toyworld:3",
                 "--out", str(out), "--cache", "4", "--phase", "stage1", "--set", "train.stage1_steps=1",
                 "--set", "train.stage1_lr=1e-9", "--init", "tiny-random"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "starting from tiny-random's vae, text_encoder, dit" in err
    assert "its DiT predicted the velocity, this one learns to predict the sample" in err
    trained = load_preset(str(out / "preset.yaml"))
    assert trained.dit.prediction == "sample"
    before = ModelStore(load_preset("tiny-random"), torch.device("cpu"), torch.float32).dit().state_dict()
    after = load_file_tensors(out / "dit.safetensors")
    assert all(torch.allclose(after[k].float(), v.float(), atol=1e-5) for k, v in before.items())  # lr ~0: as taken


def test_init_adds_a_pooled_prompt_to_a_trained_preset_whose_files_lack_it(tmp_path, tiny_train, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    steps = ["--data", "toyworld:3", "--cache", "4", "--phase", "stage1", "--set", "train.stage1_steps=1"]
    assert main(["train", "--preset", "tiny-train", "--out", str(first), "--init", "tiny-random", *steps]) == 0
    trained = str(first / "preset.yaml")  # a preset with weight files, whose DiT has no text_pool
    args = ["train", "--preset", trained, "--set", "dit.text_pool=true", "--out", str(second), *steps,
            "--set", "train.stage1_lr=1e-9"]
    capsys.readouterr()
    assert main(args + ["--init", trained]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "preset's weight files do not fit its networks as set; they start random" in err
    assert "s vae, text_encoder, dit (the VAE phase counts as done); the pooled prompt " \
           "(dit.text_pool) joins its time embedding at zero" in err
    before, after = load_file_tensors(first / "dit.safetensors"), load_file_tensors(second / "dit.safetensors")
    assert after["text_pool.weight"].abs().max() < 1e-6  # lr ~0: as it started
    assert all(torch.allclose(after[k].float(), v.float(), atol=1e-5) for k, v in before.items())
    assert load_preset(str(second / "preset.yaml")).dit.text_pool
    # resuming builds the networks without the preset's files: the checkpoint holds them all
    assert main(args + ["--more", "1"]) == 0
    assert main(["train", "--preset", trained, "--set", "dit.text_pool=true", "--out", str(tmp_path / "third"),
                 *steps]) == 1  # a new run without --init starts from the preset's files, which do not fit
    assert "does not fit MultiMaskDiT" in capsys.readouterr().err


def test_a_new_run_from_a_preset_with_weight_files_says_it_trains_on_from_them(tmp_path, tiny_train, capsys):
    first = tmp_path / "first"
    steps = ["--data", "toyworld:3", "--cache", "4", "--phase", "stage1", "--set", "train.stage1_steps=1"]
    assert main(["train", "--preset", "tiny-train", "--out", str(first), "--init", "tiny-random", *steps]) == 0
    assert "trains on from them" not in capsys.readouterr().err  # --init says what it takes instead
    trained = str(first / "preset.yaml")
    assert main(["train", "--preset", trained, "--out", str(tmp_path / "second"), *steps]) == 0
    err = "".join(capsys.readouterr().err.split())  # the console wraps the long path anywhere
    assert "".join(f"starting from {trained}'s weight files: each phase it runs trains on from them, "
                   "the VAE's too".split()) in err
    assert main(["train", "--preset", "tiny-train", "--out", str(tmp_path / "third"), *steps]) == 0
    assert "trains on from them" not in capsys.readouterr().err  # random weights: nothing to say


def test_the_ema_warms_up_so_a_random_initialisation_fades_out_of_it():
    assert training.ema_decay_at(0.999, 0) == pytest.approx(0.1)
    decays = [training.ema_decay_at(0.999, step) for step in range(20_000)]
    assert all(a <= b for a, b in zip(decays, decays[1:])) and decays[-1] == 0.999
    model = torch.nn.Linear(4, 4)
    ema = {k: v.detach().float().clone() for k, v in model.state_dict().items()}  # the initialisation
    init = ema["weight"].clone()
    with torch.no_grad():
        model.weight.fill_(1.0)  # trained away from it at once, then left there
    for step in range(1250):
        training.ema_update(ema, model, training.ema_decay_at(0.999, step))
    init_share = ((ema["weight"] - 1) / (init - 1)).max().item()  # ema = share * init + (1 - share) * 1
    assert abs(init_share) < 1e-3  # a plain 0.999 EMA would still hold 0.999 ** 1250 = 29% of it


def test_training_noise_is_correlated_as_the_train_section_says_level_by_level(tiny_train):
    intervals = torch.tensor([4] * 16 + [1] * 16)  # blueprint samples and finest-level samples
    rng = torch.Generator().manual_seed(0)
    sampled_only = load_preset("tiny-train", ["sampler.noise_prior=progressive", "sampler.noise_correlation=[0.9,0,0]"])
    assert torch.equal(training.training_noise(rng, (32, 4, 6, 4, 4), intervals, sampled_only),
                       torch.randn(32, 4, 6, 4, 4, generator=torch.Generator().manual_seed(0)))  # the sampler's bias
    preset = load_preset("tiny-train", ["train.noise_prior=progressive", "train.noise_correlation=[0.9,0,0]"])
    noise = training.training_noise(torch.Generator().manual_seed(0), (32, 4, 6, 4, 4), intervals, preset)
    neighbours = [torch.corrcoef(torch.stack([part[:, :, j].flatten() for j in range(6)])).diagonal(1).mean()
                  for part in (noise[:16], noise[16:])]
    assert neighbours[0] > 0.8 and abs(neighbours[1]) < 0.15  # only the blueprint level is correlated
    for bad, message in (("sampler.noise_prior=pink", "sampler.noise_prior must be one of mixed, progressive"),
                         ("train.noise_prior=pink", "train.noise_prior must be one of mixed, progressive"),
                         ("train.noise_correlation=[0.5]", "train.noise_correlation needs one value per level"),
                         ("sampler.lag=[2]", "sampler.lag needs one number of steps"),
                         ("sampler.lag=[2,0,-1]", "sampler.lag needs one number of steps"),
                         ("sampler.eta=[0.5]", "sampler.eta needs one value in"),
                         ("sampler.eta=[1.5,0,0]", "sampler.eta needs one value in"),
                         ("sampler.eta_window=[0.8,0.1]", "sampler.eta_window is"),
                         ("sampler.eta=[0.7,0,0] sampler.eta_window=[0.1,0.8]", None),
                         ("sampler.stagger=[0.5,0,0]", None), ("sampler.lag=[3,0,0]", None),
                         ("sampler.waiting_frames=-1", "sampler.waiting_frames is a number"),
                         ("sampler.waiting_frames=true", "sampler.waiting_frames must be int or null"),
                         ("sampler.lag=[3,0,0] sampler.waiting_frames=2", None),
                         ("sampler.stagger=[0.5,0,0] sampler.lag=[3,0,0]", "both set a level's lag")):
        if message is None:
            load_preset("tiny-train", bad.split())  # valid on its own
            continue
        with pytest.raises(ConfigError, match=message):
            load_preset("tiny-train", bad.split())


def test_a_deeper_dit_grows_from_a_trained_one_and_computes_the_same():
    from tempo_cli.trainer import grow_blocks, grown_positions

    assert grown_positions(8, 12) == [0, 1, 3, 4, 6, 7, 9, 10]  # a new block after every two
    assert grown_positions(2, 5) == [0, 2] and grown_positions(2, 2) == [0, 1]
    with pytest.raises(ConfigError):
        grown_positions(3, 2)
    config = load_preset("tiny-random").dit  # 2 blocks
    torch.manual_seed(0)
    trained, deeper = MultiMaskDiT(config), MultiMaskDiT(dataclasses.replace(config, num_layers=5))
    fresh = deeper.state_dict()
    deeper.load_state_dict(grow_blocks(trained.state_dict(), fresh, 2, 5))
    grown = deeper.state_dict()
    assert torch.equal(grown["blocks.2.ffn.0.weight"], trained.state_dict()["blocks.1.ffn.0.weight"])
    assert torch.equal(grown["blocks.1.self_attn.q.weight"], fresh["blocks.1.self_attn.q.weight"])  # a new block
    assert not grown["blocks.1.ffn.2.weight"].any() and not grown["blocks.4.cross_attn.o.bias"].any()
    x, y = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 20, 2, 4, 4)
    ctx, pos, steps = torch.randn(2, 3, config.text_dim), torch.tensor([[0, 4], [2, 6]]), torch.tensor([600.0, 90.0])
    with torch.no_grad():
        torch.testing.assert_close(deeper(x, steps, ctx, y, pos), trained(x, steps, ctx, y, pos))
        deeper.blocks[1].ffn[2].weight.add_(0.1)  # the new blocks do take part once they learn
        assert not torch.allclose(deeper(x, steps, ctx, y, pos), trained(x, steps, ctx, y, pos))


def test_finer_patches_split_a_trained_dits_patch_embedding_and_head():
    from tempo_cli.trainer import finer_patches, repatch

    assert finer_patches((1, 4, 4), (1, 2, 2)) and finer_patches((1, 2, 2), (1, 1, 1))
    assert finer_patches((1, 4, 4), (1, 4, 2)) and not finer_patches((1, 2, 2), (1, 2, 2))
    assert not finer_patches((1, 4, 4), (1, 3, 3)) and not finer_patches((1, 2, 2), (2, 1, 1))
    assert not finer_patches((1, 2, 2), (1, 4, 4))
    with pytest.raises(ConfigError, match="can't split DiT patches"):
        repatch({}, (1, 2, 2), (1, 4, 4), 16)
    config = load_preset("tiny-random").dit  # 2x2 patches
    torch.manual_seed(0)
    trained, finer = MultiMaskDiT(config), MultiMaskDiT(dataclasses.replace(config, patch_size=(1, 1, 1)))
    finer.load_state_dict(repatch(trained.state_dict(), (1, 2, 2), (1, 1, 1), config.out_dim))
    split, whole = finer.state_dict(), trained.state_dict()
    assert torch.equal(split["blocks.1.ffn.0.weight"], whole["blocks.1.ffn.0.weight"])
    # a patch of copies of one value per channel embeds as the old patch did, in every new token
    cells = torch.randn(1, config.in_dim, 2, 2, 2)
    tiled = cells.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # each cell a 2x2 patch of copies
    with torch.no_grad():
        old_tokens = trained.patchify(tiled).reshape(1, 2, 2, 2, -1)  # [B, f, h, w, dim]
        new_tokens = finer.patchify(tiled).reshape(1, 2, 4, 4, -1)
        torch.testing.assert_close(new_tokens, old_tokens.repeat_interleave(2, 2).repeat_interleave(2, 3))
        # the head of a token gives the mean of the old head's outputs over the parts of its patch
        h = torch.randn(3, config.dim)
        old_out = trained.head.head(h).reshape(3, 2, 2, config.out_dim)
        torch.testing.assert_close(finer.head.head(h), old_out.mean(dim=(1, 2)))


@pytest.mark.parametrize("setting, grown, check", [
    ("dit.num_layers=3", "its 2 DiT blocks are grown to 3, the new ones starting as identities",
     lambda dit: "blocks.2.ffn.2.weight" in dit),
    ("dit.patch_size=[1,1,1]", "its [1, 2, 2] patches are split into [1, 1, 1]",
     lambda dit: dit["patch_embedding.weight"].shape[2:] == (1, 1, 1)),
])
def test_init_grows_or_splits_a_trained_dit_into_the_new_preset(tmp_path, tiny_train, capsys, setting, grown, check):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny-train", "--set", setting, "--data", "toyworld:3",
                 "--out", str(out), "--cache", "4", "--phase", "stage1", "--set", "train.stage1_steps=1",
                 "--init", "tiny-random"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "untrained random weights" not in err  # the preset's notice is for videos, not for a run that trains it
    assert f"starting from tiny-random's vae, text_encoder, dit (the VAE phase counts as done); {grown}" in err
    assert load_preset(str(out / "preset.yaml")).dit == load_preset("tiny-train", setting.split()).dit
    assert check(load_file_tensors(out / "dit.safetensors"))
