"""Classifier guidance: the shape classifier, its gradient, the guided velocity, the sampler and `tempo train`'s
classifier phase, on random weights and tiny presets."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tempo_cli import sampling
from tempo_cli.cli import main
from tempo_cli.config import ClassifierConfig
from tempo_cli.errors import ConfigError
from tempo_cli.loading import build_random
from tempo_cli.models.classifier import (ABSENT, COLOUR_NAMES, ShapeClassifier, augment, frames_log_prob,
                                         prompt_targets, shape_gradient)
from tempo_cli.presets import load_preset
from tempo_cli.toyworld import SHAPES

WITH_CLASSIFIER = ["classifier.dim=8", "sampler.classifier_scale=[4, 0, 0]"]


def random_classifier(seed: int = 0) -> ShapeClassifier:
    return build_random(lambda: ShapeClassifier(ClassifierConfig(dim=8)), seed)


def test_prompt_targets_name_each_objects_colour_and_shape():
    assert prompt_targets("a red ball moving left on a black background") == [
        (COLOUR_NAMES.index("red"), SHAPES.index("ball"))]
    assert prompt_targets("A blue square moving up and a cyan triangle circling on a gray background.") == [
        (COLOUR_NAMES.index("blue"), SHAPES.index("square")), (COLOUR_NAMES.index("cyan"), SHAPES.index("triangle"))]
    assert prompt_targets("a dog in snow") is None


def tiny_vae():
    from tempo_cli.models.vae import CausalVideoVAE

    return build_random(lambda: CausalVideoVAE(load_preset("tiny-random").vae), 0).eval().requires_grad_(False)


def test_the_classifier_answers_a_shape_or_absent_for_any_frame_size():
    classifier = random_classifier()
    for size in (16, 64):
        logits = classifier(torch.rand(3, 3, size, size) * 2 - 1, torch.tensor([0, 3, 7]))
        assert logits.shape == (3, len(SHAPES) + 1) and ABSENT == len(SHAPES)


def test_the_shape_gradient_raises_the_prompted_shapes_log_probability_of_the_decoded_frames():
    classifier, vae = random_classifier(), tiny_vae()
    x0 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    targets = [(1, 2), (4, 0)]

    def log_prob(latents):
        video = vae.decode(latents)  # [2, 3, 9, H, W]
        with torch.no_grad():
            return frames_log_prob(classifier, video.transpose(1, 2).reshape(-1, *video.shape[1:2], *video.shape[3:]),
                                   targets)

    grad = shape_gradient(classifier, vae, x0, targets)
    assert grad.shape == x0.shape and grad.abs().sum() > 0 and grad.dtype == x0.dtype
    with torch.inference_mode():  # latents made under inference mode, one chunk: a view, not a copy
        made = x0[:1].clone()
    assert torch.equal(shape_gradient(classifier, vae, made, targets), shape_gradient(
        classifier, vae, x0[:1].clone(), targets))
    step = 1e-2 * grad / grad.norm()
    assert log_prob(x0 + step) > log_prob(x0) > log_prob(x0 - step)
    # the decoder is causal: a latent frame's gradient carries what it does to later frames, never the reverse
    later = x0.clone()
    later[:, :, 2] = 0
    assert not torch.allclose(shape_gradient(classifier, vae, later, targets)[:, :, :2], grad[:, :, :2])


def test_augmented_frames_stay_in_range_and_differ_from_draw_to_draw():
    frames = torch.rand(4, 3, 16, 16) * 2 - 1
    first = augment(frames, torch.Generator().manual_seed(0))
    assert first.shape == frames.shape and first.abs().max() <= 1
    assert torch.equal(first, augment(frames, torch.Generator().manual_seed(0)))
    assert not torch.allclose(first, augment(frames, torch.Generator().manual_seed(1)))
    assert not torch.allclose(first, frames)


def test_the_guided_velocity_moves_each_frame_in_the_window_by_the_scale_along_the_gradient():
    velocity = torch.randn(1, 4, 5, 2, 2, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(1, 4, 5, 2, 2, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.0]).reshape(1, 1, 5, 1, 1)  # waiting, three running, done
    assert torch.equal(sampling.classifier_velocity(velocity, grad, sigma, 0.0), velocity)
    guided = sampling.classifier_velocity(velocity, grad, sigma, 2.0, window=(0.3, 1.0))
    moved = velocity - guided
    assert torch.equal(moved[:, :, [0, 3, 4]], torch.zeros_like(moved[:, :, [0, 3, 4]]))
    for frame, s in ((1, 0.9), (2, 0.5)):  # the frame's gradient at unit RMS, times the scale, over sigma
        g = grad[:, :, frame]
        assert torch.allclose(moved[:, :, frame], 2.0 * g / g.square().mean().sqrt() / s, atol=1e-5)
    # only the gradient's direction counts, frame by frame
    rescaled = grad * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]).reshape(1, 1, 5, 1, 1)
    assert torch.allclose(sampling.classifier_velocity(velocity, rescaled, sigma, 2.0, (0.3, 1.0)), guided)
    # the clean latents the guided velocity predicts moved by the scale along the gradient
    z = torch.randn_like(velocity)
    ahead = sampling.velocity_to_x0(z, guided, sigma) - sampling.velocity_to_x0(z, velocity, sigma)
    assert torch.allclose(ahead[:, :, 1:3].square().mean(dim=(1, 3, 4)), torch.full((1, 2), 4.0), atol=1e-4)
    assert (ahead[:, :, 1:3] * grad[:, :, 1:3]).sum() > 0
    assert sampling.in_window(sigma, (0.3, 1.0)).flatten().tolist() == [False, True, True, False, False]


def test_classifier_settings_are_checked():
    preset = load_preset("tiny-random", WITH_CLASSIFIER)
    assert preset.classifier == ClassifierConfig(dim=8) and preset.sampler.classifier_scale_at(0) == 4.0
    assert preset.sampler.classifier_scale_at(1) == 0.0 and load_preset("tiny-random").classifier is None
    for bad, message in ((["sampler.classifier_scale=[4, 0, 0]"], "needs a classifier section"),
                         (WITH_CLASSIFIER[:1] + ["sampler.classifier_scale=[4, 0]"], "one value >= 0 per level"),
                         (WITH_CLASSIFIER[:1] + ["sampler.classifier_scale=[-1, 0, 0]"], "one value >= 0 per level"),
                         (WITH_CLASSIFIER + ["sampler.classifier_window=[0.8, 0.2]"], "low <= high"),
                         (WITH_CLASSIFIER + ["sampler.classifier_every=0"], "whole number of steps >= 1"),
                         (["train.stage1_steps=1", "train.stage1_lr=1", "train.stage2_steps=1", "train.stage2_lr=1",
                           "train.classifier_steps=5"], "needs a classifier section")):
        with pytest.raises(ConfigError, match=message):
            load_preset("tiny-random", bad)
    with pytest.raises(ConfigError, match="needs weights.classifier"):
        load_preset("toy", ["classifier.dim=64", "sampler.classifier_scale=[8, 0, 0]", "weights.classifier=''"])


def test_the_store_loads_the_classifier_in_float32_and_builds_an_untrained_one_at_random():
    """Whatever the store's dtype, the classifier comes in float32 and the DiT in the store's: from the shipped
    file for toy, from seed 3 where the preset names no file (tempo train's start), as for a random-weight preset;
    asking again gives the same network."""
    from safetensors.torch import load_file

    from tempo_cli.presets import find_weights
    from tempo_cli.runtime import ModelStore

    shipped = ModelStore(load_preset("toy"), torch.device("cpu"), torch.bfloat16)
    classifier = shipped.classifier()
    assert classifier is shipped.classifier() and not classifier.training
    assert next(classifier.parameters()).dtype == torch.float32 and next(shipped.dit().parameters()).dtype == \
        torch.bfloat16
    stored = load_file(str(find_weights(load_preset("toy"))["classifier"]))
    assert all(torch.equal(v.float(), stored[k].float()) for k, v in classifier.state_dict().items())
    untrained = ModelStore(load_preset("toy", ["weights.classifier=''", "sampler.classifier_scale=[0, 0, 0]"]),
                           torch.device("cpu"), torch.bfloat16)
    expected = build_random(lambda: ShapeClassifier(load_preset("toy").classifier), 3).state_dict()
    got = untrained.classifier().state_dict()
    assert next(iter(got.values())).dtype == torch.float32
    assert all(torch.equal(v, expected[k]) for k, v in got.items())
    random_preset = ModelStore(load_preset("tiny-random", WITH_CLASSIFIER), torch.device("cpu"), torch.bfloat16)
    assert next(random_preset.classifier().parameters()).dtype == torch.float32


def test_classifier_guidance_changes_the_blueprint_only_where_it_is_on(tmp_path):
    """Blueprints of the random tiny preset with a random classifier: guidance at scale 0, with a window no sigma
    falls in, or with a prompt that is not a toy-world caption, gives exactly the unguided latents."""
    from tempo_cli.options import open_session
    from stages import blueprint

    def latents(overrides, prompt="a red ball moving left on a black background"):
        session = open_session("tiny-random", list(overrides), None, "cpu", "fp32", quiet=True)
        return blueprint.run(session, prompt, fps=6, frames=9, seed=3).chunks[0]

    plain = latents([])
    guided = latents(WITH_CLASSIFIER)
    assert not torch.allclose(plain, guided)
    assert torch.equal(latents(WITH_CLASSIFIER[:1] + ["sampler.classifier_scale=[0, 4, 4]"]), plain)
    assert torch.equal(latents(WITH_CLASSIFIER + ["sampler.classifier_window=[0.999, 0.9999]"]), plain)
    assert torch.equal(latents(WITH_CLASSIFIER, "a dog in snow"), latents([], "a dog in snow"))


def test_tempo_train_learns_a_classifier_resumes_it_and_ships_it(tmp_path, capsys):
    """The classifier phase on a tiny run: it learns from the frames decoded from the stage-2 clips' latents,
    checkpoints like any phase, and the exported preset names the classifier's file and samples with classifier
    guidance."""
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "tiny-cls.yaml").write_text("""
extends: tiny-random
classifier: {dim: 8}
sampler: {classifier_scale: [2, 0, 0]}
train: {stage1_steps: 0, stage1_lr: 1.0e-3, stage2_steps: 0, stage2_lr: 1.0e-3, batch_size: 2, clip_frames: 9,
        classifier_steps: 4, classifier_batch: 8, checkpoint_every: 2, warmup_steps: 1}
""")
    out = tmp_path / "run"
    args = ["train", "--preset", str(presets / "tiny-cls.yaml"), "--data", "toyworld:3", "--out", str(out),
            "--cache", "20"]
    assert main(args) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "classifier: " in err and "decoded frames to learn from" in err and "held-out accuracy" in err
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
        assert state["done"] == ["classifier"] and any(k.startswith("model.classifier.") for k in f.keys())
    trained = load_preset(str(out / "preset.yaml"))
    assert trained.weights.classifier == "classifier.safetensors" and trained.sampler.classifier_scale[0] == 2
    start = random_classifier().state_dict()
    with safe_open(str(out / "classifier.safetensors"), "pt") as f:
        assert any(not torch.equal(f.get_tensor(k), start[k]) for k in f.keys())
    video = tmp_path / "clip.mp4"
    assert main(["generate", "a red ball moving left on a black background", "--preset", str(out / "preset.yaml"),
                 "--frames", "5", "-o", str(video), "-q"]) == 0
    # --more trains the finished classifier on; a run without the classifier phase exports none, and no guidance
    assert main(args + ["-q", "--phase", "classifier", "--more", "2"]) == 0
    other = tmp_path / "plain"
    assert main(["train", "--preset", str(presets / "tiny-cls.yaml"), "--data", "toyworld:3", "--out", str(other),
                 "--cache", "4", "-q", "--phase", "stage2", "--set", "train.stage2_steps=1"]) == 0
    plain = load_preset(str(other / "preset.yaml"))
    assert plain.classifier is None and not plain.sampler.classifier_scale
    assert not (other / "classifier.safetensors").exists()


def test_the_gradient_is_asked_about_the_guided_band_and_the_frames_before_it():
    from tempo_cli.pipeline import STEER_CONTEXT, _band_gradient

    asked = []

    def steer(x0):
        asked.append(x0.clone())
        return torch.ones_like(x0)

    x0 = torch.randn(1, 4, 8, 2, 2)
    inside = torch.tensor([False, False, False, True, True, False, False, False]).reshape(1, 1, 8, 1, 1)
    grad = _band_gradient(steer, x0, inside)
    first = 3 - STEER_CONTEXT
    assert torch.equal(asked[0], x0[:, :, first:5])
    assert grad[:, :, first:5].eq(1).all() and grad[:, :, :first].eq(0).all() and grad[:, :, 5:].eq(0).all()
    assert torch.equal(_band_gradient(steer, x0, torch.tensor(True)), torch.ones_like(x0))  # one sigma: every frame
    assert torch.equal(asked[1], x0)


def test_classifier_every_asks_for_a_new_gradient_only_every_so_many_guided_steps(monkeypatch):
    import math

    from tempo_cli.models import classifier as module
    from tempo_cli.options import open_session
    from stages import blueprint

    calls = []
    real = module.shape_gradient
    monkeypatch.setattr(module, "shape_gradient", lambda *args: calls.append(1) or real(*args))
    counts, made = {}, {}
    for every in (1, 3):
        calls.clear()
        session = open_session("tiny-random", WITH_CLASSIFIER + [f"sampler.classifier_every={every}"], None, "cpu",
                               "fp32", quiet=True)
        made[every] = blueprint.run(session, "a red ball moving left on a black background", fps=6, frames=9,
                                    seed=3, steps=8).chunks[0]
        counts[every] = len(calls)
    assert counts[1] > 3 and counts[3] == math.ceil(counts[1] / 3)
    assert not torch.allclose(made[1], made[3])
