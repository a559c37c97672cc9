"""The shipped toy model: how long generation takes on this machine, and how well its videos follow their prompts
and hold together, judged against the toy world's ground truth (the figures behind tests/test_toy_model.py).

* time: ``tempo generate`` of ``--seconds`` (default 10) at 24 fps in one process, per stage, after a warm-up;
* prompt adherence: 6 fps blueprints of :func:`tempo_cli.evaluation.prompt_set` prompts, per prompt and overall;
* consistency: a 30 s video refined to 24 fps, then continued twice by 15 s to 60 s with a new prompt (the joins
  judged apart).

    python benchmarks/toy_model.py [--prompts 24] [--seconds 10] [--seeds 0 1 2] [--own-seeds] [--threads N]
        [--skip-long] [--preset toy]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from stages import blueprint, continue_, encode, refine
from tempo_cli.evaluation import adherence, adherence_summary, consistency, max_jump, prompt_set, track
from tempo_cli.options import open_session
from tempo_cli.toyworld import nearest_colour

LONG_PROMPT = "a yellow ball bouncing on a dark blue background"
NEXT_PROMPT = "a yellow ball moving left on a dark blue background"


def timed_generation(session, seconds: float) -> None:
    for label, length in (("warm-up", 1.0), (f"{seconds:g} s", seconds)):
        start = time.perf_counter()
        latent_file = blueprint.run(session, "a red ball bouncing on a black background", fps=6, seconds=length)
        made = time.perf_counter()
        refined = refine.run(session, latent_file, to_fps=24)
        done = time.perf_counter()
        frames = encode.run(session, refined)
        end = time.perf_counter()
        print(f"{label}: blueprint {made - start:.1f} s, refine to 24 fps {done - made:.1f} s, decode "
              f"{end - done:.1f} s, total {end - start:.1f} s for {len(frames)} frames")


def adherence_table(session, count: int, seed: int, own_seeds: bool = False) -> dict[str, float]:
    """The figures of ``count`` prompts' 5 s blueprints, all at ``seed``, or with ``own_seeds`` prompt i at seed
    ``seed * count + i``: each prompt its own initial noise, so one run is many draws, not one."""
    print(f"blueprints at seed {seed}" + (f" (prompt i at seed {seed * count} + i)" if own_seeds else "") + ":")
    judged = []
    for index, prompt in enumerate(prompt_set(count)):
        frames = encode.run(session, blueprint.run(session, prompt, fps=6, seconds=5,
                                                   seed=seed * count + index if own_seeds else seed))
        j = adherence(frames, prompt)
        judged.append(j)
        print(f"  {prompt:62s} found {j.found:4.2f} colour {j.colour_share:4.2f} shape {j.shape_share:4.2f} "
              f"motion {j.shown_motion}{'' if j.motion_ok else ' (wrong)'} jumps {j.jump_share:4.2f}")
    figures = adherence_summary(judged)
    print(f"colour: {figures['colour']:.3f} of frames (worst prompt {figures['worst colour']:.2f}); shape: "
          f"{figures['shape']:.3f} of prompts; motion: {figures['motion']:.3f} of {figures['moving']} moving prompts, "
          f"{np.mean([j.motion_ok for j in judged]):.3f} of all; jumps between {figures['jumps']:.3f} of neighbouring "
          f"frames")
    for kind in ("shape", "motion"):
        groups: dict[str, list] = {}
        for j in judged:
            groups.setdefault(getattr(j, kind), []).append(j)
        print(f"  by {kind}: " + "; ".join(
            f"{name} ({len(js)}) colour {np.mean([j.colour_share for j in js]):.2f} shape "
            f"{np.mean([j.shape_ok for j in js]):.2f} motion {np.mean([j.motion_ok for j in js]):.2f}"
            for name, js in groups.items()))
    return figures


def long_videos(session) -> None:
    start = time.perf_counter()
    thirty = refine.run(session, blueprint.run(session, LONG_PROMPT, fps=6, seconds=30, seed=1), to_fps=24)
    frames = encode.run(session, thirty)
    print(f"30 s ({len(frames)} frames) made in {time.perf_counter() - start:.1f} s: "
          f"{consistency(frames, 24, LONG_PROMPT)}")
    start = time.perf_counter()
    first = continue_.run(session, thirty, seconds=15, context=5, prompt=NEXT_PROMPT)
    joined = continue_.run(session, first, seconds=15, context=5)
    frames = encode.run(session, joined)
    print(f"continued twice by 15 s to {len(frames)} frames in {time.perf_counter() - start:.1f} s: "
          f"{consistency(frames, 24, NEXT_PROMPT)}")
    main = track(frames, "dark blue").main
    for join in (thirty.header.frames, first.header.frames):
        near = [m for m in main[join - 24:join + 24] if m is not None]
        print(f"join at frame {join}: largest jump {max_jump(main, at=range(join - 24, join + 24)):.2f} px, "
              f"colours {sorted({nearest_colour(m.mean_rgb) for m in near})}, object in {len(near)}/48 frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="judge the blueprints at each of these seeds (the tests use 0); a single seed's motion "
                        "figure moves by a prompt or two with the noise")
    parser.add_argument("--own-seeds", action="store_true",
                        help="give each prompt its own seed (seed x prompts + its index), so that every prompt "
                        "starts from its own noise; by default (and in the tests) all prompts of a seed share it")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-long", action="store_true", help="skip the 30 s and 60 s videos")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    session = open_session(args.preset, None, None, "cpu", None, quiet=True)
    print(f"preset {args.preset}, {torch.get_num_threads()} threads, dtype {session.store.dtype}")
    timed_generation(session, args.seconds)
    figures = [adherence_table(session, args.prompts, seed, args.own_seeds) for seed in args.seeds]
    if len(figures) > 1:
        keys = ("colour", "worst colour", "shape", "motion", "jumps")
        mean = {key: np.mean([f[key] for f in figures]) for key in keys}
        print(f"mean over seeds {' '.join(map(str, args.seeds))}: colour {mean['colour']:.3f} (worst prompt "
              f"{mean['worst colour']:.2f}), shape {mean['shape']:.3f}, motion {mean['motion']:.3f}, jumps "
              f"{mean['jumps']:.3f}")
    if not args.skip_long:
        long_videos(session)


if __name__ == "__main__":
    main()
