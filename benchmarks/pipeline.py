"""End-to-end time and peak memory of next-frame-rate generation against one-shot generation of the same frames.

For 24 fps videos of several lengths, on a small random-weight model on the CPU:

* next-frame-rate (NFR): a 6 fps blueprint of N = 4k+1 frames in one chunk, refined to 12 fps in 2 chunks and
  to 24 fps in 4 (the seamless layout), giving 4N-3 frames;
* one-shot: the same 4N-3 frames at 24 fps as one chunk (a single-level plan), same model, same steps.

Every run is a fresh process (this script with ``--single``), so its peak RSS is its own; the figure reported
is the peak minus a baseline taken after imports, model construction and a warm-up generation of 5 frames,
i.e. activation and working memory. Freed heap is handed back and the peak reset before each phase, so the
rise within a phase (denoising one level, or VAE work) is reported too. ``--repeats`` rounds go over all
configurations; per phase the least time is kept, as other work on the machine only ever adds time.
Beside the measurements: the FLOP and activation estimates of ``tempo plan``
(:func:`tempo_cli.plan.estimate_cost`) for the same plans. The text encoder is skipped: the prompt
embedding is seeded random noise and the negative one zeros (an empty negative prompt).

    python benchmarks/pipeline.py [--lengths 2,4,8] [--long] [--steps 8] [--size 128] [--threads N] [--repeats 2]
                                  [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import NamedTuple

import torch

from tempo_cli.pipeline import LevelSampling, decode_level, denoise_level, level_conditions
from tempo_cli.plan import CostEstimate, Plan, estimate_cost, make_plan
from tempo_cli.presets import load_preset
from tempo_cli.runtime import ModelStore, cpu_has_native_bf16, resolve_dtype

PRESET = "tiny-random"
# A DiT deeper and wider than tiny-random's, so that it weighs against the VAE: 6.3M parameters, head_dim 48
# (RoPE parts 16/16/16). Attention's share of the FLOPs grows with tokens / (6 dim + 2 ffn_dim), not with depth.
DIT_OVERRIDES = ("dit.dim=192", "dit.num_heads=4", "dit.num_layers=12", "dit.ffn_dim=512")
INTERVALS = (4, 2, 1)  # 6 -> 12 -> 24 fps
CHUNKS = (1, 2, 4)
BLUEPRINT_FPS = 6
SEED = 0
MODES = ("nfr", "one-shot")
MIB = 2**20


class Row(NamedTuple):
    """One length: its 24 fps frame count, tempo plan's estimate, and the measurements per mode."""

    seconds: float
    frames: int
    cost: CostEstimate
    results: dict[str, dict]


def preset_for(size: int):
    return load_preset(PRESET, (*DIT_OVERRIDES, f"video.height={size}", f"video.width={size}"))


def blueprint_frames(seconds: float) -> int:
    """Blueprint frames (4k+1) at 6 fps covering ``seconds``; the 24 fps video then has 4N-3 frames."""
    return 4 * max(1, math.ceil(seconds * BLUEPRINT_FPS / 4 - 1e-9)) + 1


def plans(seconds: float, size: int) -> dict[str, Plan]:
    frames = blueprint_frames(seconds)
    final = (frames - 1) * (INTERVALS[0] // INTERVALS[-1]) + 1  # 4N - 3
    return {"nfr": make_plan(frames, INTERVALS, CHUNKS, height=size, width=size),
            "one-shot": make_plan(final, (1,), (1,), height=size, width=size)}


def prompt_embeddings(preset) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random prompt embedding ``[text_len, text_dim]`` and the zero one of an empty negative prompt."""
    shape = (preset.text_encoder.text_len, preset.dit.text_dim)
    embeds = torch.randn(shape, generator=torch.Generator().manual_seed(SEED))
    return embeds, torch.zeros(shape)


def reset_peak() -> bool:
    """Return freed heap to the system (glibc), then reset this process's peak RSS to its current RSS
    (Linux ``clear_refs``); False where that is not allowed."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the next phase may reuse freed memory without the RSS showing it
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@contextmanager
def phase(times: dict[str, float], peaks: dict[str, int], name: str, kind: str):
    """Add the phase's seconds to ``times[name]``; record the process's peak RSS in ``peaks["run"]`` and the
    phase's rise over the RSS at its start in ``peaks[kind]`` (the largest of the phases of that kind)."""
    reset_peak()
    before = max_rss_bytes()  # the current RSS right after a reset
    start = time.perf_counter()
    yield
    times[name] += time.perf_counter() - start
    peak = max_rss_bytes()
    peaks["run"] = max(peaks.get("run", 0), peak)
    peaks[kind] = max(peaks.get(kind, 0), peak - before)


def generate(store: ModelStore, plan: Plan, embeds, negative, steps: int) -> tuple[dict[str, float], dict[str, int]]:
    """Run every level of ``plan`` and decode the last; returns seconds per phase and peak RSS (see :func:`phase`).

    Phases: ``denoise <fps>`` per level, ``vae`` (condition encodes and decodes of intermediate levels),
    ``decode`` (the final level), ``total``. Peak kinds: ``denoise`` and ``vae`` (both VAE phases).
    """
    preset, vae, dit = store.preset, store.vae(), store.dit()
    size, fps = preset.video.height, preset.video.fps
    times: dict[str, float] = defaultdict(float)
    peaks: dict[str, int] = {}
    start = time.perf_counter()
    previous, latents, coarse = None, None, None
    for level in plan.levels:
        with phase(times, peaks, "vae", "vae"):
            if previous is not None:  # the coarser level's frames are this level's anchors
                coarse = decode_level(vae, previous, latents)
            conditions = level_conditions(vae, level, coarse, {}, size, size)
        settings = LevelSampling.for_level(preset, level.interval, steps)
        with phase(times, peaks, f"denoise {fps // level.interval}", "denoise"):
            latents = denoise_level(dit, level, conditions, embeds, negative, settings, SEED)
        previous = level
    with phase(times, peaks, "decode", "vae"):
        video = decode_level(vae, plan.final, latents)  # [3, T, H, W]
    times["total"] = time.perf_counter() - start
    if video.shape[1] != plan.final.frames:
        raise RuntimeError(f"decoded {video.shape[1]} frames, the plan has {plan.final.frames}")
    return dict(times), peaks


def single(seconds: float, mode: str, steps: int, size: int, threads: int) -> dict:
    """One configuration in this (fresh) process: seconds per phase, peak RSS and the baseline under it.

    The baseline is the RSS after imports, model construction and a warm-up generation of 5 frames
    (the peak so far, where the peak cannot be reset). ``load`` is the 1-minute load average at the end.
    """
    torch.set_num_threads(threads)
    preset = preset_for(size)
    device = torch.device("cpu")
    store = ModelStore(preset, device, resolve_dtype(None, device))
    embeds, negative = prompt_embeddings(preset)
    generate(store, make_plan(5, (1,), (1,), height=size, width=size), embeds, negative, 1)  # warm-up
    resettable = reset_peak()
    baseline = max_rss_bytes()
    times, peaks = generate(store, plans(seconds, size)[mode], embeds, negative, steps)
    return {"times": times, "peak": peaks["run"], "denoise_rise": peaks["denoise"], "vae_rise": peaks["vae"],
            "baseline": baseline, "resettable": resettable, "load": os.getloadavg()[0]}


def run_child(seconds: float, mode: str, args) -> dict:
    command = [sys.executable, __file__, "--single", f"{seconds:g}:{mode}", "--steps", str(args.steps),
               "--size", str(args.size), "--threads", str(args.threads)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_lengths(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, e.g. 2,4,8; got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"lengths must be positive seconds, got {text!r}")
    return values


def denoise_seconds(result: dict) -> float:
    return sum(v for k, v in result["times"].items() if k.startswith("denoise"))


def describe(preset, steps: int, threads: int, repeats: int) -> str:
    dit, sampler = preset.dit, preset.sampler
    dtype = resolve_dtype(None, torch.device("cpu"))
    native = "native bf16 (AMX/AVX512-BF16)" if cpu_has_native_bf16() else "no native bf16"
    passes = "2 passes batched" if sampler.guidance != "none" else "1 pass"
    return "\n".join([
        f"model: preset {PRESET} with {' '.join(DIT_OVERRIDES)}, random weights; DiT "
        f"{dit.num_parameters() / 1e6:.2f}M parameters, head_dim {dit.head_dim}, patch {list(dit.patch_size)}",
        f"video {preset.video.height}x{preset.video.width} at 24 fps; CPU, {str(dtype).removeprefix('torch.')} "
        f"(CPU has {native}); {threads} thread(s)",
        f"sampling: {steps} steps per level, guidance {sampler.guidance} scale {sampler.guidance_scale:g} "
        f"({passes}); shift per level from the preset",
        f"text encoder skipped: random prompt embedding [{preset.text_encoder.text_len}, {dit.text_dim}] "
        f"(seed {SEED}), zero negative embedding",
        f"NFR: blueprint 6 fps (1 chunk) -> 12 fps ({CHUNKS[1]} chunks) -> 24 fps ({CHUNKS[2]} chunks), seamless; "
        f"one-shot: the same 24 fps frames in one chunk",
        f"each run in a fresh process after a warm-up; {repeats} round(s) over all configurations; times: the least "
        "per phase over the rounds; memory: the most of a run's peak RSS minus its baseline after imports, models "
        "and the warm-up",
    ])


def combine(runs: list[dict]) -> dict:
    """Runs of one configuration as one: per phase the least time (the work is the same, the machine's
    other load is not); memory the most; ``spread`` = slowest total / fastest total - 1."""
    totals = [r["times"]["total"] for r in runs]
    return {"times": {k: min(r["times"][k] for r in runs) for k in runs[0]["times"]},
            "totals": totals, "spread": max(totals) / min(totals) - 1,
            "peak": max(r["peak"] for r in runs), "rise": max(r["peak"] - r["baseline"] for r in runs),
            "baseline": min(r["baseline"] for r in runs), "denoise_rise": max(r["denoise_rise"] for r in runs),
            "vae_rise": max(r["vae_rise"] for r in runs), "load": max(r["load"] for r in runs),
            "resettable": all(r["resettable"] for r in runs)}


def measure(lengths: list[float], preset, args) -> list[Row]:
    """Every configuration ``args.repeats`` times, round after round, so a busy spell of the machine spoils
    one run of each rather than every run of one; see :func:`combine`."""
    runs: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for round_ in range(args.repeats):
        for seconds in lengths:
            for mode in MODES:
                result = run_child(seconds, mode, args)
                runs[seconds, mode].append(result)
                print(f"round {round_ + 1}/{args.repeats}: {seconds:g} s {mode}: {result['times']['total']:.2f} s "
                      f"(load {result['load']:.1f})", file=sys.stderr)
    rows = []
    dtype_bytes = resolve_dtype(None, torch.device("cpu")).itemsize
    for seconds in lengths:
        the_plans = plans(seconds, args.size)
        cost = estimate_cost(the_plans["nfr"], preset.dit, args.steps, guidance=preset.sampler.guidance != "none",
                             text_len=preset.text_encoder.text_len, dtype_bytes=dtype_bytes,
                             spatial_factor=preset.vae.spatial_factor)
        frames = the_plans["nfr"].final.frames
        duration = (frames - 1) / preset.video.fps  # the request rounded up to a 4k+1 blueprint
        print(f"\n{duration:.3g} s: blueprint {the_plans['nfr'].frames} frames at 6 fps -> {frames} frames at 24 fps")
        results = {}
        for mode in MODES:
            results[mode] = result = combine(runs[seconds, mode])
            t = result["times"]
            levels = ", ".join(f"{k.split()[1]} fps {v:.2f}" for k, v in t.items() if k.startswith("denoise"))
            totals = ", ".join(f"{total:.1f}" for total in result["totals"])
            print(f"  {mode:8s} denoise {levels} s; conditions+coarse decodes {t['vae']:.2f} s; "
                  f"final decode {t['decode']:.2f} s; total {t['total']:.2f} s (runs: {totals}; load up to "
                  f"{result['load']:.1f}); peak RSS {result['peak'] / MIB:.0f} MiB (baseline "
                  f"{result['baseline'] / MIB:.0f}; largest rise in a denoise phase "
                  f"{result['denoise_rise'] / MIB:.1f}, in a VAE phase {result['vae_rise'] / MIB:.1f})")
        rows.append(Row(duration, frames, cost, results))
    return rows


def print_times(rows: list[Row]) -> None:
    print("\ntime in seconds, ratio = one-shot / NFR (above 1: NFR is faster); denoise = all levels; "
          "+decode = denoise and the final level's VAE decode; total = also condition encodes and (NFR) decodes "
          "of the coarser levels")
    print("GFLOP: tempo plan's estimate for the DiT (VAE excluded), ratio = one-shot / NFR")
    print(f"{'':6} {'':6} {'max tokens':>10} | {'denoise':^19} | {'+decode':^19} | {'total':^19} | {'GFLOP':^21}")
    print(f"{'length':>6} {'frames':>6} {'NFR/1-shot':>10} | " + " | ".join(
        [f"{'NFR':>6} {'1-shot':>6} {'ratio':>5}"] * 3 + [f"{'NFR':>7} {'1-shot':>7} {'ratio':>5}"]))
    for row in rows:
        nfr, one, cost = row.results["nfr"], row.results["one-shot"], row.cost
        tokens = f"{max(lv.max_tokens for lv in cost.levels)}/{cost.one_shot.max_tokens}"
        cells = []
        for measure in (denoise_seconds, lambda r: denoise_seconds(r) + r["times"]["decode"],
                        lambda r: r["times"]["total"]):
            a, b = measure(nfr), measure(one)
            cells.append(f"{a:>6.2f} {b:>6.2f} {b / a:>5.2f}")
        cells.append(f"{cost.flops / 1e9:>7.1f} {cost.one_shot.flops / 1e9:>7.1f} {cost.speedup:>5.2f}")
        print(f"{row.seconds:>5.3g}s {row.frames:>6} {tokens:>10} | " + " | ".join(cells))


def print_memory(rows: list[Row]) -> None:
    print("\nmemory in MiB: peak = peak RSS of the whole run over the process's baseline; denoise = largest rise "
          "of the peak RSS over the RSS at the start of a denoise phase; plan est. = tempo plan's activation "
          "lower bound (per guidance pass; NFR: its largest level)")
    print(f"{'':6} | {'peak':^13} | {'denoise':^13} | {'plan est.':^13}")
    print(f"{'length':>6} | " + " | ".join([f"{'NFR':>6} {'1-shot':>6}"] * 3))
    for row in rows:
        nfr, one = row.results["nfr"], row.results["one-shot"]
        over = [[r["rise"] / MIB for r in (nfr, one)], [r["denoise_rise"] / MIB for r in (nfr, one)]]
        over.append([row.cost.peak_activation_bytes / MIB, row.cost.one_shot.activation_bytes / MIB])
        print(f"{row.seconds:>5.3g}s | " + " | ".join(f"{a:>6.1f} {b:>6.1f}" for a, b in over))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=parse_lengths, default=[2.0, 4.0, 8.0],
                        help="24 fps video lengths in seconds, comma-separated (default 2,4,8)")
    parser.add_argument("--long", action="store_true", help="also 16 s")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per level (default 8)")
    parser.add_argument("--size", type=int, default=128, help="frame height and width, a multiple of 16 (default 128)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"CPU threads for torch (default {torch.get_num_threads()})")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations; the least time "
                        "per phase is reported (default 2)")
    parser.add_argument("--quick", action="store_true", help="one short length (2 s): a smoke run")
    parser.add_argument("--single", metavar="SECONDS:MODE", help=argparse.SUPPRESS)  # one configuration, JSON out
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16 (VAE 8 x patch 2), got {args.size}")
    if args.threads < 1 or args.repeats < 1:
        parser.error(f"--threads and --repeats must be at least 1, got {args.threads} and {args.repeats}")
    if args.single:
        seconds, _, mode = args.single.partition(":")
        if mode not in MODES:
            parser.error(f"--single {args.single!r}: expected SECONDS:MODE with MODE one of {', '.join(MODES)}")
        print(json.dumps(single(float(seconds), mode, args.steps, args.size, args.threads)))
        return

    lengths = [2.0] if args.quick else list(args.lengths)
    lengths += [16.0] if args.long and 16.0 not in lengths else []
    preset = preset_for(args.size)
    print(describe(preset, args.steps, args.threads, args.repeats))
    wall = time.perf_counter()
    rows = measure(lengths, preset, args)
    elapsed = time.perf_counter() - wall
    spread = max((r["spread"], row.seconds, mode) for row in rows for mode, r in row.results.items())
    if spread[0] > 0.15:
        print(f"\nnote: timings are noisy here: the runs of a configuration differ by up to {spread[0]:.0%} "
              f"({spread[1]:.3g} s {spread[2]}); the least time per phase is reported, more --repeats help")
    if not all(r["resettable"] for row in rows for r in row.results.values()):
        print("\nnote: the peak RSS could not be reset here (/proc/self/clear_refs): baselines include the "
              "warm-up's peak, and a phase's rise counts only new highs")

    print_times(rows)
    print_memory(rows)
    print(f"\nbenchmark wall time {elapsed:.0f} s")


if __name__ == "__main__":
    main()
