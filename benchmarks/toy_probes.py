"""What a toy model's DiT has learnt, probed apart from its videos (tempo_cli/probes.py); the figures behind the
README's "What holds it back".

* motion words: blueprints of one seed for prompts that differ only in their motion (left, right, up, down); the
  mean distance between their object tracks, against the world's for the same start (0 px: the motion word does
  not change where the object goes);
* high noise: the velocity loss on 6 fps world clips at noise levels near 1, against predicting just the prompted
  background, and the share of the loss the model cannot see (its invisible patch directions);
* temporal reach: how much the velocity at each latent frame changes when the middle latent frame's input changes;
* invisible directions: how many there are, and how much of the starting noise stays in them in generated
  latents, against encoded world clips;
* caption swaps and given frames: the velocity loss on 6 fps clips of objects moving left, right, up or down with
  their own caption, with its motion words swapped (left <-> right, up <-> down), with its colour swapped and with
  its shape swapped (ball -> square -> triangle -> ball; a word the model uses raises the loss when it is wrong),
  from noise alone, and on latent frames 2+ with the first 5 frames given as conditions or latent frames 0-1 given
  clean at their own time 0 (a model that carries what it is given forward in time has a lower loss there than
  from noise);
* next frame: the velocity loss on one latent frame k (1, 3, 5) at t = 0.8 and 0.95 as a rolling sampler sees it
  (frames before it clean, frames after it pure noise), with the own caption and with the motion swapped, against
  the frames before it noised to t too (nothing given);
* from the truth: blueprints of the 24 test prompts started from the world's own clip of each, noised to a strength
  (1: pure noise, the prompt alone) and denoised by the preset's sampler, judged like the blueprints of
  tests/test_toy_model.py: the noise level where the DiT loses what the world's layout gave it.

    python benchmarks/toy_probes.py [--preset toy] [--seeds 4] [--clips 24] [--strengths 0.5 0.8 0.9 0.95 1]
        [--probes NAME ...] [--threads N]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from stages import blueprint, encode
from tempo_cli import probes
from tempo_cli.conditions import condition_latents
from tempo_cli.evaluation import adherence, adherence_summary, prompt_set, track
from tempo_cli.models.text_encoder import encode_prompts
from tempo_cli.options import open_session
from tempo_cli.toyworld import (BACKGROUNDS, COLOURS, MOTIONS, SHAPE_CYCLE, SHAPES, ObjectSpec, SceneSpec, render,
                                scene_from_caption)
from tempo_cli.training import to_video

DIRECTIONS = ("moving left", "moving right", "moving up", "moving down")
FRAMES = 33  # 6 fps frames of a blueprint: 9 latent frames
INTERVAL = 4
PROBES = ("motion-words", "high-noise", "caption-swaps", "next-frame", "from-truth")


def motion_words(session, seeds: int) -> None:
    spreads, world = [], []
    for seed in range(seeds):
        prompts = [f"a red square {motion} on a black background" for motion in DIRECTIONS]
        tracks = [track(encode.run(session, blueprint.run(session, p, fps=6, frames=FRAMES, seed=seed)), "black").main
                  for p in prompts]
        spreads.append(probes.track_spread(tracks))
        start = scene_from_caption(prompts[0], seed=seed).objects[0]
        moved = [SceneSpec("black", (ObjectSpec("red", "square", m, start.size, (32.0, 32.0), start.speed),))
                 for m in DIRECTIONS]
        world.append(probes.track_spread([track(render(s, (FRAMES - 1) * INTERVAL + 1)[::INTERVAL], "black").main
                                          for s in moved]))
    print(f"motion words: tracks of one seed for {len(DIRECTIONS)} directions lie {np.mean(spreads):.1f} px apart "
          f"(seeds: {', '.join(f'{s:.1f}' for s in spreads)}); the world's from one start: {np.mean(world):.1f} px")


def render_clips(captions: list[str], first_seed: int) -> torch.Tensor:
    """6 fps world clips ``[N, 3, FRAMES, H, W]`` of ``captions``, clip i drawn with seed ``first_seed + i``."""
    return torch.stack([to_video(render(scene_from_caption(c, seed=first_seed + i), (FRAMES - 1) * INTERVAL + 1)
                                 [::INTERVAL]) for i, c in enumerate(captions)])


def world_clips(count: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """``count`` single-object 6 fps clips ``[N, 3, T, H, W]``, their captions and backgrounds."""
    backgrounds = [list(BACKGROUNDS)[i % len(BACKGROUNDS)] for i in range(count)]
    captions = [f"a red ball {MOTIONS[i % len(MOTIONS)]} on a {b} background" for i, b in enumerate(backgrounds)]
    return render_clips(captions, 1000), captions, backgrounds


@torch.no_grad()
def high_noise(session, count: int) -> None:
    dit, vae = session.store.dit(), session.store.vae()
    encoder, tokenizer = session.store.text_encoder()
    dtype = next(dit.parameters()).dtype
    videos, captions, backgrounds = world_clips(count)
    plain = torch.stack([torch.tensor(BACKGROUNDS[b], dtype=torch.float32) / 127.5 - 1 for b in backgrounds])
    x0 = vae.encode(videos.to(dtype)).float()
    x_bg = vae.encode(plain[:, :, None, None, None].expand_as(videos).contiguous().to(dtype)).float()
    y = condition_latents(vae, torch.zeros_like(videos).to(dtype), torch.zeros(count, FRAMES, dtype=dtype))
    context = encode_prompts(encoder, tokenizer, captions).float()
    rope = (torch.arange(x0.shape[2]) * INTERVAL)[None].expand(count, -1)
    invisible = probes.invisible_directions(dit)
    share = len(invisible) / invisible.shape[1] if len(invisible) else 0.0
    generator = torch.Generator().manual_seed(0)
    for t in (0.5, 0.9, 0.95, 0.98):
        noise = torch.randn(x0.shape, generator=generator)
        z = (1 - t) * x0 + t * noise
        target = noise - x0
        velocity = dit(z.to(dtype), torch.full((count,), t * 1000), context.to(dtype), y, rope).float()
        model = float((velocity - target).square().mean())
        background = float(((z - x_bg) / t - target).square().mean())
        print(f"high noise t={t}: velocity loss {model:.3f}; predicting the prompted background {background:.3f}; "
              f"the model's floor from the noise along its invisible directions about {share:.2f}")
    reach = probes.temporal_reach(dit, (0.1 * x0 + 0.9 * torch.randn(x0.shape, generator=generator)), 0.9,
                                  context, y, rope, frame=x0.shape[2] // 2, generator=generator)
    middle = x0.shape[2] // 2
    print("temporal reach at t=0.9 (rms velocity change by latent frames from the changed one): "
          + ", ".join(f"{abs(k - middle)}: {v:.3f}" for k, v in enumerate(reach.tolist()) if k >= middle))
    print(f"invisible directions: {len(invisible)} of {invisible.shape[1]} per patch; energy in them: encoded world "
          f"clips {probes.direction_energy(x0, invisible, dit.config.patch_size[1:]):.3f}", end="")
    made = torch.stack([blueprint.run(session, c, fps=6, frames=FRAMES, seed=i).chunks[0]
                        for i, c in enumerate(captions[:8])])
    print(f", generated blueprints {probes.direction_energy(made, invisible, dit.config.patch_size[1:]):.3f}, "
          f"standard normal noise 1")


MOTION_SWAP = {"left": "right", "right": "left", "up": "down", "down": "up"}


@torch.no_grad()
def direction_clips(session, count: int) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` 6 fps world clips of objects moving left, right, up or down (every colour, shape and background in
    turn, seeds from 2000): their captions, the videos ``[N, 3, FRAMES, H, W]`` in the DiT's dtype, their clean
    latents and their RoPE indices."""
    colours = list(COLOURS)
    captions = [f"a {colours[i % len(colours)]} {SHAPES[i % len(SHAPES)]} {DIRECTIONS[i % len(DIRECTIONS)]} on a "
                f"{list(BACKGROUNDS)[i % len(BACKGROUNDS)]} background" for i in range(count)]
    videos = render_clips(captions, 2000).to(next(session.store.dit().parameters()).dtype)
    x0 = session.store.vae().encode(videos).float()
    return captions, videos, x0, (torch.arange(x0.shape[2]) * INTERVAL)[None].expand(count, -1)


def caption_swaps(session, count: int) -> None:
    dit, vae = session.store.dit(), session.store.vae()
    encoder, tokenizer = session.store.text_encoder()
    colours = list(COLOURS)
    colour_swap = {c: colours[(i + len(colours) // 2) % len(colours)] for i, c in enumerate(colours)}
    captions, videos, x0, rope = direction_clips(session, count)
    given = torch.zeros(count, FRAMES, dtype=videos.dtype)
    given[:, :5] = 1  # pixel frames 0-4: latent frames 0 and 1
    nothing = condition_latents(vae, torch.zeros_like(videos), torch.zeros_like(given))
    conditioned = condition_latents(vae, videos * given[:, None, :, None, None], given)
    variants = {"own caption": captions, "motion swapped": [probes.swap_words(c, MOTION_SWAP) for c in captions],
                "colour swapped": [probes.swap_words(c, colour_swap) for c in captions],
                "shape swapped": [probes.swap_words(c, SHAPE_CYCLE) for c in captions]}
    contexts = {name: encode_prompts(encoder, tokenizer, texts) for name, texts in variants.items()}
    later = slice(2, None)
    for t in (0.5, 0.8, 0.9, 0.95, 0.98):
        clean_first = torch.full((x0.shape[2],), t)
        clean_first[:2] = 0
        settings = {"from noise, all frames": (t, nothing, slice(None)),
                    "from noise, frames 2+": (t, nothing, later),
                    "first 5 frames as conditions, frames 2+": (t, conditioned, later),
                    "latent frames 0-1 clean (their own time 0), frames 2+": (clean_first, nothing, later)}
        for setting, (times, y, frames) in settings.items():
            losses = {name: probes.velocity_loss(dit, x0, times, context, y, rope, seed=int(t * 100), frames=frames)
                      for name, context in contexts.items()}
            print(f"caption swaps t={t}, {setting}: velocity loss "
                  + ", ".join(f"{name} {loss:.4f}" for name, loss in losses.items()))


@torch.no_grad()
def next_frame(session, count: int) -> None:
    dit, vae = session.store.dit(), session.store.vae()
    encoder, tokenizer = session.store.text_encoder()
    captions, videos, x0, rope = direction_clips(session, count)
    frames = x0.shape[2]
    nothing = condition_latents(vae, torch.zeros_like(videos), torch.zeros(count, FRAMES, dtype=videos.dtype))
    own = encode_prompts(encoder, tokenizer, captions)
    swapped = encode_prompts(encoder, tokenizer, [probes.swap_words(c, MOTION_SWAP) for c in captions])
    for k in (1, 3, 5):
        for t in (0.8, 0.95):
            given, alone = probes.next_frame_times(frames, k, t), probes.next_frame_times(frames, k, t, context=False)
            loss = {name: probes.velocity_loss(dit, x0, times, context, nothing, rope, seed=7, frames=slice(k, k + 1))
                    for name, times, context in (("own", given, own), ("swapped", given, swapped),
                                                 ("alone", alone, own))}
            print(f"next frame k={k} t={t}: earlier frames clean: own caption {loss['own']:.3f}, motion swapped "
                  f"{loss['swapped']:.3f}; nothing given {loss['alone']:.3f}")


@torch.no_grad()
def from_truth(session, strengths: list[float], seed: int = 0) -> None:
    # the sampler's own prompt and negative embeddings (not the module's batch encoder of the same name)
    from tempo_cli.pipeline import LevelSampling, denoise_level, level_conditions
    from tempo_cli.pipeline import encode_prompts as prompt_embeddings
    from tempo_cli.plan import make_plan
    from tempo_cli.video import to_uint8_frames

    preset, store = session.preset, session.store
    height, width = preset.video.height, preset.video.width
    level = make_plan(FRAMES, (INTERVAL,), (1,), height=height, width=width, base_fps=preset.video.fps).levels[0]
    settings = LevelSampling.for_level(preset, INTERVAL)
    vae = store.vae()
    param = next(vae.parameters())
    (conditions,) = level_conditions(vae, level, None, {}, height, width)
    prompts = prompt_set(24)
    truth = vae.encode(render_clips(prompts, 0).to(param.dtype))  # clip i drawn with seed i, as the judge's tests
    embeds = [prompt_embeddings(store, p, preset.sampler.negative_prompt, settings.guided) for p in prompts]
    for strength in strengths:
        judged = []
        for prompt, clean, (embed, negative) in zip(prompts, truth, embeds):
            (z,) = denoise_level(store.dit(), level, [conditions], embed, negative, settings, seed, start=[clean],
                                 strength=strength)
            judged.append(adherence(to_uint8_frames(vae.decode(z[None].to(param.dtype))[0].float()), prompt))
        f = adherence_summary(judged)
        print(f"from the truth noised to {strength:g}: colour {f['colour']:.3f} of frames (worst prompt "
              f"{f['worst colour']:.2f}), shape {f['shape']:.3f} of prompts, motion {f['motion']:.3f} of "
              f"{f['moving']} moving prompts, jumps {f['jumps']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 1.0],
                        help="noise levels the world's clips start from (1: pure noise)")
    parser.add_argument("--probes", nargs="+", choices=PROBES, help="run only these (default: all, in this order)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    session = open_session(args.preset, None, None, "cpu", None, quiet=True)
    run = {"motion-words": lambda: motion_words(session, args.seeds),
           "high-noise": lambda: high_noise(session, args.clips),
           "caption-swaps": lambda: caption_swaps(session, args.clips),
           "next-frame": lambda: next_frame(session, args.clips),
           "from-truth": lambda: from_truth(session, args.strengths)}
    for name in args.probes or list(run):
        run[name]()


if __name__ == "__main__":
    main()
