"""The training run: phases (VAE, stage 1, stage 2) with AdamW, warm-up, clipping, optional EMA, safetensors
checkpoints that resume after an interruption, DDP under ``torchrun`` (gloo on CPU, NCCL on GPUs), and the
trained model written as a preset folder (weights + ``preset.yaml``) that ``--weights`` / ``--preset`` load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tempo_cli import distributed, training
from tempo_cli.config import Preset
from tempo_cli.errors import CheckpointError, ConfigError, UsageError
from tempo_cli.pipeline import Progress

CHECKPOINT = "checkpoint.safetensors"
LOSS_SHOWN_EVERY = 10  # steps between updates of the progress bar's loss
CACHE_FORMAT = "2"  # encoded clips: 2 added the latent focus maps
CLIPS_PER_DRAW = 100_000_000  # clip indices between two draws of a phase's clips (a rank's draw holds < 500_000)
DRAW_SPAN = 100_000  # draws per extension round
TIED_ALIAS = "model.encoder.embed_tokens.weight"  # the text encoder's token embedding, also ``model.shared``
TRAINED_BY = " Trained by tempo train "  # how an export's description says what was trained
DECODER_PAIR_CLIPS = CLIPS_PER_DRAW * DRAW_SPAN * 1000  # their clip indices: past any DiT phase's draws
WEIGHT_FILES = {"dit": "dit.safetensors", "vae": "vae.safetensors", "text_encoder": "text_encoder.safetensors"}
CLASSIFIER_FILE = "classifier.safetensors"  # only for a preset with a classifier section
CLASSIFIER_LATENT_FRAMES = 3  # the classifier phase learns from the frames of each clip's first 3 latent frames


@dataclasses.dataclass
class RunState:
    phase: str = ""
    step: int = 0
    done: tuple[str, ...] = ()
    steps: int = 0  # the current phase's length when it is an extension (``more``); 0: the preset's
    round: int = 0  # how many times the current phase was extended: new batches and noise each round
    length: int = 0  # the current phase's length as it was trained (what --export reports); 0: not recorded
    rounds: dict = dataclasses.field(default_factory=dict)  # phase -> its extensions so far (they outlive a phase)
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()


def _load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into ``model``'s parameters and buffers, each in the dtype the model keeps it in."""
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def grown_positions(old_layers: int, new_layers: int) -> list[int]:
    """Where the blocks of an ``old_layers``-deep DiT sit in a ``new_layers``-deep one: spread evenly, in order,
    so that the new blocks fall between them (8 -> 12: a new block after every two), none of them first."""
    if not 0 < old_layers <= new_layers:
        raise ConfigError(f"can't grow {old_layers} DiT blocks to {new_layers}")
    return [i + i * (new_layers - old_layers) // old_layers for i in range(old_layers)]


def grow_blocks(trained: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], old_layers: int,
                new_layers: int) -> dict[str, torch.Tensor]:
    """The state of a ``new_layers``-deep DiT from a trained ``old_layers``-deep one (``trained``) and a freshly
    initialised deeper one (``fresh``): the trained blocks at ``grown_positions``, every other tensor from
    ``trained``, and each new block from ``fresh`` with the projections that write into the residual stream (its
    attention outputs and the FFN's last layer) zeroed, so that the grown DiT computes exactly what the trained
    one did and training deepens it from there."""
    place = dict(enumerate(grown_positions(old_layers, new_layers)))
    out = {k: v for k, v in trained.items() if not k.startswith("blocks.")}
    for key, value in trained.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            out[f"blocks.{place[int(index)]}.{rest}"] = value
    writers = ("self_attn.o.", "cross_attn.o.", "ffn.2.")
    for key, value in fresh.items():
        if key.startswith("blocks.") and key not in out:
            out[key] = torch.zeros_like(value) if key.split(".", 2)[2].startswith(writers) else value
    return out


def finer_patches(old: tuple[int, ...], new: tuple[int, ...]) -> bool:
    """Whether a DiT with ``old`` patches can be split into one with ``new`` ones: the same temporal size, and
    spatial sizes that divide the old ones."""
    return tuple(old) != tuple(new) and old[0] == new[0] and all(o % n == 0 for o, n in zip(old[1:], new[1:]))


def repatch(trained: dict[str, torch.Tensor], old: tuple[int, ...], new: tuple[int, ...],
            out_dim: int) -> dict[str, torch.Tensor]:
    """The state of a DiT with finer spatial patches (``new``, see :func:`finer_patches`) from a trained one with
    ``old`` patches: each old patch splits into parts of the new size. The patch embedding sums the old one over the
    parts, so a new token embeds its part as the old one embedded a patch of copies of it; the head averages its old
    outputs over the parts; every other tensor is kept. The blocks then see tokens of the new, finer grid (RoPE
    indices count them), and training teaches them that grid."""
    if not finer_patches(old, new):
        raise ConfigError(f"can't split DiT patches {list(old)} into {list(new)}",
                          hint="a finer patch keeps the temporal size and divides the spatial ones, e.g. "
                               "[1, 4, 4] -> [1, 2, 2]")
    pt, (rh, rw), (nh, nw) = new[0], (old[1] // new[1], old[2] // new[2]), new[1:]
    out = dict(trained)
    embed = trained["patch_embedding.weight"]  # [dim, in, pt, ph, pw]
    out["patch_embedding.weight"] = embed.reshape(*embed.shape[:3], rh, nh, rw, nw).sum(dim=(3, 5)).contiguous()
    weight, bias = trained["head.head.weight"], trained["head.head.bias"]  # rows ordered (pt, ph, pw, out_dim)
    out["head.head.weight"] = (weight.reshape(pt, rh, nh, rw, nw, out_dim, -1).mean(dim=(1, 3))
                               .reshape(-1, weight.shape[-1]).contiguous())
    out["head.head.bias"] = bias.reshape(pt, rh, nh, rw, nw, out_dim).mean(dim=(1, 3)).reshape(-1).contiguous()
    return out


@contextlib.contextmanager
def _weights_swapped_in(model: torch.nn.Module, tensors: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """``model`` holds ``tensors`` (e.g. its EMA) inside the block and its own weights again after; no-op for None."""
    if tensors is None:
        yield
        return
    own = {k: v.clone() for k, v in model.state_dict().items()}
    _load_weights(model, tensors)
    try:
        yield
    finally:
        model.load_state_dict(own)


def _encoder_fingerprint(vae) -> str:
    """sha256 of what makes a VAE's latents (the encoder's weights and the latent statistics): which VAE a cache
    of encoded clips was made with. The decoder is left out, so the decoder phase keeps the caches valid."""
    return _fingerprint(vae, ("encoder.", "conv1."))


def _fingerprint(model: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> str:
    """sha256 of ``model``'s tensors whose names start with one of ``prefixes`` (all by default), and of its latent
    statistics where it has them (a VAE's). Each tensor's own bytes are hashed, one tensor at a time: a bf16 model
    is not widened to float32, and a tensor already on the CPU is not copied. A float32 model keeps the fingerprint
    that caches made before this hold."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            digest.update(name.encode())
            if value.dtype != torch.float32:
                digest.update(str(value.dtype).encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    if hasattr(getattr(model, "config", None), "latents_mean"):
        digest.update(json.dumps([model.config.latents_mean, model.config.latents_std]).encode())
    return digest.hexdigest()


def _changed_fields(settings) -> str:
    """JSON of a dataclass's fields that have no default or differ from it: a cache key that stays the same when a
    field whose default changes nothing is added later."""
    changed = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
               if f.default is dataclasses.MISSING or getattr(settings, f.name) != f.default}
    return json.dumps(changed, sort_keys=True)


def _read_cache(path: Path, captions: dict[str, list[str]], shape_delta: bool) -> dict[int, training.Prepared]:
    """The encoded clips of ``path``; their shape deltas only with ``shape_delta`` (a run without shape contrast
    may read a cache made with it)."""
    tensors = load_file(str(path))
    return {int(n): training.Prepared(tensors[f"{n}.targets"], tensors[f"{n}.conditions"],
                                      tensors[f"{n}.intervals"], names, tensors[f"{n}.focus"],
                                      tensors[f"{n}.shape_delta"] if shape_delta else None)
            for n, names in captions.items()}


def _matching_metadata(path: Path, key: dict[str, str]) -> dict[str, str] | None:
    """The metadata of the safetensors file ``path`` if it exists and holds every item of ``key``, else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return meta if all(meta.get(k) == v for k, v in key.items()) else None


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; weights are ordinary files
    os.replace(tmp, path)


class Trainer:
    """Trains the networks of ``preset`` (from its weights: random ones from its seed, or its files) into ``out``."""

    def __init__(self, preset: Preset, out: Path, source: training.VideoSource, *, device: torch.device,
                 progress: Progress, seed: int = 0, cache_size: int = 512, export_dtype: torch.dtype = torch.float32,
                 init: bool = False):
        """The networks start from the preset's weights (random ones from its seed, or its files), unless they will
        be replaced: a run resumed from the checkpoint in ``out`` (``resumed``) starts them random, whatever the
        preset's files are; with ``init`` (``--init``, :meth:`take_over`) they start random only if the preset's
        files do not fit the networks, as after ``--set dit.text_pool=true``, and stay so where ``--init`` does not
        replace them."""
        from tempo_cli.config import WeightsConfig
        from tempo_cli.runtime import ModelStore

        self.preset, self.out, self.source, self.device = preset, out, source, device
        self.progress, self.seed, self.cache_size, self.export_dtype = progress, seed, cache_size, export_dtype
        self.cfg = training.stage_plan(preset) and preset.train
        self.resumed = not init and (out / CHECKPOINT).is_file()
        drawn = dataclasses.replace(preset, weights=WeightsConfig(random_seed=0, tokenizer=preset.weights.tokenizer))
        store = ModelStore(drawn if self.resumed else preset, device, torch.float32)  # fp32 masters
        try:
            vae, dit = store.vae(), store.dit()
        except CheckpointError:
            if not init:
                raise
            progress.log(f"{preset.name}'s weight files do not fit its networks as set; they start random")
            store = ModelStore(drawn, device, torch.float32)
            vae, dit = store.vae(), store.dit()
        self.vae, self.dit = vae.train(), dit.train()
        self.text_encoder, self.tokenizer = store.text_encoder()
        self.text_encoder.train()
        # the shape classifier (classifier guidance), when the preset has one: its file's weights, or random ones
        self.classifier = store.classifier().train() if preset.classifier is not None else None
        for model in (self.vae, self.dit, self.text_encoder, self.classifier):
            if model is not None:
                model.requires_grad_(True)
        self.state = RunState()
        out.mkdir(parents=True, exist_ok=True)

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def _models(self) -> dict[str, torch.nn.Module]:
        models = {"vae": self.vae, "dit": self.dit, "text_encoder": self.text_encoder}
        return models if self.classifier is None else {**models, "classifier": self.classifier}

    def save_checkpoint(self, optimizer: torch.optim.Optimizer | None = None,
                        ema: dict[str, torch.Tensor] | None = None) -> None:
        if not distributed.is_main():
            return
        tensors = {f"model.{m}.{k}": v for m, model in self._models().items() for k, v in model.state_dict().items()
                   if k != TIED_ALIAS}
        tensors.update({f"ema.{k}": v for k, v in (ema or {}).items()})
        names = {id(p): n for m, model in self._models().items() for n, p in
                 ((f"{m}.{k}", p) for k, p in model.named_parameters())}
        for group in optimizer.param_groups if optimizer is not None else []:
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(value):
                        tensors[f"optim.{names[id(p)]}.{key}"] = value.reshape(-1) if value.ndim == 0 else value
        meta = {"state": json.dumps(dataclasses.asdict(self.state))}
        atomic_save(tensors, self.out / CHECKPOINT, meta)

    def load_checkpoint(self, announce: bool = True) -> dict[str, torch.Tensor] | None:
        """Restore models and run state from ``out``; returns the tensors (for the optimizer and EMA). With
        ``announce``, logs what was loaded and where training will resume."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            self.state = RunState(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in json.loads(f.metadata()["state"]).items()})
        tensors = load_file(str(path))
        for m, model in self._models().items():
            own = {k[len(m) + 7:]: v for k, v in tensors.items() if k.startswith(f"model.{m}.")}
            if m == "classifier" and not own:  # a run begun before its preset had a classifier: it keeps its start
                continue
            missing, unexpected = model.load_state_dict(own, strict=False)
            if set(missing) - {TIED_ALIAS} or unexpected:
                raise CheckpointError(f"{path} does not fit the {m} of preset {self.preset.name}: "
                                      f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        if announce and (not self.state.phase or self.state.phase in self.state.done):
            self.progress.log(f"loaded {path}: trained {', '.join(self.state.done) or 'nothing yet'}")
        elif announce:
            self.progress.log(f"resuming {self.state.phase} at step {self.state.step} from {path}")
        return tensors

    @staticmethod
    def restore_optimizer(optimizer, params: dict[str, torch.nn.Parameter], tensors) -> None:
        for name, p in params.items():
            state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")
                     and k.count(".") == name.count(".") + 2}
            if state:
                state["step"] = state["step"].reshape(()) if "step" in state else torch.tensor(0.0)
                optimizer.state[p] = state

    # ---- phases -------------------------------------------------------------------------------------------------

    def take_over(self, trained: Preset) -> list[str]:
        """Start this (new) run from the weights of a trained preset, network by network, wherever the architecture
        is the same; returns the names taken. A VAE taken over counts as trained (its phase is done), with the
        trained preset's latent statistics, so its latents are exactly those the trained preset's DiT knows."""
        from tempo_cli.runtime import ModelStore

        if (self.out / CHECKPOINT).is_file():
            raise UsageError(f"--init starts a new run, and {self.out} already holds one",
                             hint="choose a new --out folder, or leave --init out to resume")
        store = ModelStore(trained, self.device, torch.float32)
        stats = {"latents_mean": trained.vae.latents_mean, "latents_std": trained.vae.latents_std}
        layers = self.preset.dit.num_layers
        same = {"vae": dataclasses.replace(self.preset.vae, **stats) == trained.vae,
                # the same tensors whatever the head is trained to predict: a new target is learnt on from them; a
                # deeper DiT of the same kind grows from the trained one (depth up-scaling, grow_blocks), and one
                # with finer spatial patches is split from it (repatch)
                # and a pooled-text projection (DiTConfig.text_pool) is added at zero
                "dit": self.preset.dit == dataclasses.replace(trained.dit, prediction=self.preset.dit.prediction,
                                                              num_layers=max(layers, trained.dit.num_layers),
                                                              patch_size=self.preset.dit.patch_size,
                                                              text_pool=self.preset.dit.text_pool)
                and (tuple(self.preset.dit.patch_size) == tuple(trained.dit.patch_size)
                     or finer_patches(trained.dit.patch_size, self.preset.dit.patch_size))
                and (self.preset.dit.text_pool or not trained.dit.text_pool),
                "text_encoder": self._same_text_encoder(trained)}
        taken = [name for name in ("vae", "text_encoder", "dit") if same[name]]
        grown = "dit" in taken and layers > trained.dit.num_layers
        split = "dit" in taken and tuple(self.preset.dit.patch_size) != tuple(trained.dit.patch_size)
        pooled = "dit" in taken and self.preset.dit.text_pool and not trained.dit.text_pool
        for name in taken:
            source = store.text_encoder()[0] if name == "text_encoder" else getattr(store, name)()
            tensors = source.state_dict()
            if name == "dit" and grown:
                tensors = grow_blocks(tensors, self.dit.state_dict(), trained.dit.num_layers, layers)
            if name == "dit" and split:
                tensors = repatch(tensors, tuple(trained.dit.patch_size), tuple(self.preset.dit.patch_size),
                                  self.preset.dit.out_dim)
            if name == "dit" and pooled:  # the new projection keeps its zero start
                tensors = {**tensors, **{k: v for k, v in self.dit.state_dict().items() if k.startswith("text_pool.")}}
            _load_weights(self._models()[name], tensors)
        if "vae" in taken:
            self.state = dataclasses.replace(self.state, done=("vae",), latents_mean=stats["latents_mean"],
                                             latents_std=stats["latents_std"])
            self._set_vae_stats()
        switched = "dit" in taken and self.preset.dit.prediction != trained.dit.prediction
        self.progress.log(f"starting from {trained.name}'s {', '.join(taken) or 'nothing (no network matches)'}"
                          + (" (the VAE phase counts as done)" if "vae" in taken else "")
                          + (f"; its {trained.dit.num_layers} DiT blocks are grown to {layers}, "
                             "the new ones starting as identities" if grown else "")
                          + (f"; its {list(trained.dit.patch_size)} patches are split into "
                             f"{list(self.preset.dit.patch_size)}" if split else "")
                          + (f"; its DiT predicted the {trained.dit.prediction}, this one learns to predict the "
                             f"{self.preset.dit.prediction}" if switched else "")
                          + ("; the pooled prompt (dit.text_pool) joins its time embedding at zero" if pooled else ""))
        distributed.barrier()  # every rank has looked for an earlier run before rank 0 writes this one
        self.save_checkpoint()
        return taken

    def average_with(self, other: Preset, weight: float = 0.5) -> None:
        """Move the loaded DiT and text encoder ``weight`` of the way to a trained preset's (weight averaging of
        two models fine-tuned from one start, a "model soup"), in float32. Both networks must have the same
        architecture, and the VAE the same weights and latent statistics: a DiT knows only its own VAE's latents."""
        from tempo_cli.runtime import ModelStore

        store = ModelStore(other, self.device, torch.float32)
        stats = {"latents_mean": other.vae.latents_mean, "latents_std": other.vae.latents_std}
        own_vae, their_vae = self.vae.state_dict(), store.vae().state_dict()
        if (dataclasses.replace(self.preset.vae, **stats) != other.vae
                or (tuple(self.state.latents_mean), tuple(self.state.latents_std))
                != (tuple(other.vae.latents_mean), tuple(other.vae.latents_std))
                or any(not torch.equal(v.float(), their_vae[k].float()) for k, v in own_vae.items())):
            raise UsageError(f"--average {other.name}: its VAE is not this run's, so its DiT knows other latents",
                             hint="average only models trained on from the same VAE (--init from one of them)")
        if self.preset.dit != other.dit:
            raise UsageError(f"--average {other.name}: its DiT's architecture is not this run's")
        if not self._same_text_encoder(other):
            raise UsageError(f"--average {other.name}: its text encoder or tokenizer is not this run's")
        for name, source in (("dit", store.dit()), ("text_encoder", store.text_encoder()[0])):
            model = self._models()[name]
            theirs = source.state_dict()
            _load_weights(model, {k: torch.lerp(v.float(), theirs[k].float(), weight) if v.is_floating_point()
                                  else v for k, v in model.state_dict().items()})

    def _same_text_encoder(self, other: Preset) -> bool:
        return (self.preset.text_encoder, self.preset.weights.tokenizer) == (other.text_encoder,
                                                                             other.weights.tokenizer)

    def run(self, phases: list[str] | None = None, prepare_only: bool = False, more: int = 0) -> None:
        """Train the phases not yet done (only ``phases`` if given), resuming from ``out``. With
        ``prepare_only``, encode the DiT phases' clips into ``out/cache`` and train nothing. ``more`` trains the
        finished phase in ``phases`` for that many more steps: a new warm-up and cosine cycle from its trained
        (EMA) weights, on new batches; interrupted, it resumes like any phase."""
        tensors = self.load_checkpoint()
        if more:
            self._extend(phases, more)
        if prepare_only:
            plan = [phase for phase, _, _ in training.stage_plan(self.preset)]
            if "vae" in plan and "vae" not in self.state.done:
                raise UsageError("--prepare encodes clips with the trained VAE, and this run has not trained it yet",
                                 hint="run tempo train --phase vae first")
            for phase, _, _ in training.stage_plan(self.preset):
                if phase in ("stage1", "stage2") and (not phases or phase in phases):
                    self.prepared(phase)
            return
        for phase, steps, lr in training.stage_plan(self.preset):
            if phase in self.state.done or (phases and phase not in phases):
                continue
            resume = tensors if self.state.phase == phase else None
            if self.state.phase != phase:
                self.state = dataclasses.replace(self.state, phase=phase, step=0, steps=0, round=0)
            steps = self.state.steps or steps
            self.state = dataclasses.replace(self.state, length=steps)
            if phase in ("vae", "decoder"):
                self._train_vae(steps, lr, resume, decoder_only=phase == "decoder")
            elif phase == "classifier":
                self._train_classifier(steps, lr, resume)
            else:
                self._train_dit(phase, steps, lr, resume)
            self.state = dataclasses.replace(self.state, done=self.state.done + (phase,))
            tensors = None
            self.save_checkpoint()  # the phase is done: its optimiser state is no longer needed
            self.export()

    def _extend(self, phases: list[str] | None, more: int) -> None:
        if not phases or len(phases) != 1:
            raise UsageError("--more extends one finished phase: name it with --phase")
        phase = phases[0]
        if self.state.phase == phase and phase not in self.state.done and self.state.round:
            return  # an interrupted extension: resume it
        if phase not in self.state.done:
            raise UsageError(f"--more: phase {phase} has not finished in {self.out}",
                             hint="run tempo train without --more to finish (or resume) it first")
        if phase == "vae" and any(p in self.state.done for p in ("stage1", "stage2")):
            raise UsageError("--more: the DiT phases were trained on this VAE's latents; extending the VAE would "
                             "change them", hint="train the VAE longer in a new run (train.vae_steps), or its "
                                                 "decoder alone: --phase decoder")
        round_ = max(self.state.rounds.get(phase, 0), self.state.round if self.state.phase == phase else 0) + 1
        self.state = dataclasses.replace(self.state, phase=phase, step=0, steps=more, round=round_,
                                         rounds={**self.state.rounds, phase: round_},
                                         done=tuple(p for p in self.state.done if p != phase))
        self.progress.log(f"extending {phase} by {more} steps (round {self.state.round})")

    def _optimizer(self, named: dict[str, torch.nn.Parameter], lr: float, resume) -> torch.optim.AdamW:
        optimizer = torch.optim.AdamW(named.values(), lr=lr, weight_decay=self.cfg.weight_decay)
        if resume is not None:
            self.restore_optimizer(optimizer, named, resume)
        return optimizer

    def _loop(self, name: str, steps: int, lr: float, named, step_fn, resume, ema_model=None) -> None:
        optimizer = self._optimizer(named, lr, resume)
        ema = None
        if ema_model is not None and self.cfg.ema_decay > 0:
            ema = {k: (resume[f"ema.{k}"] if resume is not None and f"ema.{k}" in resume else v.detach().float().clone())
                   for k, v in ema_model.state_dict().items()}
        smoothed = None
        with self.progress.task(f"{name}: {steps} steps", steps) as advance:
            advance(self.state.step)
            while self.state.step < steps:
                for group in optimizer.param_groups:
                    group["lr"] = training.learning_rate(self.state.step, lr, self.cfg.warmup_steps, steps)
                loss, info = step_fn(self.state.step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if distributed.world_size() > 1:
                    for p in named.values():
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= distributed.world_size()
                torch.nn.utils.clip_grad_norm_(list(named.values()), self.cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    training.ema_update(ema, ema_model, training.ema_decay_at(self.cfg.ema_decay, self.state.step))
                self.state = dataclasses.replace(self.state, step=self.state.step + 1)
                # kept on the device: reading a value waits for the GPU, so it is read only when shown
                smoothed = loss.detach() if smoothed is None else 0.95 * smoothed + 0.05 * loss.detach()
                shown = self.state.step % LOSS_SHOWN_EVERY == 0 or self.state.step == steps
                advance(1, f"loss {smoothed.item():.4f}" if shown else "")
                if self.state.step % 50 == 0 or self.state.step == steps:
                    self.progress.log(f"{name} step {self.state.step}: loss {loss.item():.4f} (smoothed "
                                      f"{smoothed.item():.4f}) "
                                      + " ".join(f"{k} {float(v):.4f}" for k, v in info.items()))
                if self.state.step % self.cfg.checkpoint_every == 0 or self.state.step == steps:
                    self.save_checkpoint(optimizer, ema)
                if self.cfg.sample_every and self.state.step % self.cfg.sample_every == 0 and name != "classifier":
                    self.write_sample(name, self.state.step, ema)  # every rank: generation shares chunks
        if ema is not None:
            _load_weights(ema_model, ema)

    def _train_vae(self, steps: int, lr: float, resume, decoder_only: bool = False) -> None:
        """The VAE phase, or with ``decoder_only`` the decoder phase: the decoder (and its input projection) learns
        on the frozen encoder's latents, which therefore keep their statistics and what the DiT learnt of them."""
        rng = np.random.default_rng([self.seed, 5 if decoder_only else 1, distributed.rank(), self.state.step]
                                    + ([self.state.round] if self.state.round else []))
        self._set_vae_stats()
        named = {f"vae.{k}": p for k, p in self.vae.named_parameters()
                 if not decoder_only or k.startswith(("decoder.", "conv2."))}
        self.vae.train().requires_grad_(False)
        for p in named.values():
            p.requires_grad_(True)
        batch = self.cfg.vae_batch_size or self.cfg.batch_size
        share = self.cfg.decoder_dit_share if decoder_only else 0.0
        pairs = self._decoder_pairs() if share else None

        def step(i: int):
            if pairs is not None and rng.random() < share:  # the DiT's own latents, and the clips they stand for
                latents, clips = pairs
                size = min(len(clips), max(2, batch * 9 // clips.shape[1]))  # as many frames as a world batch
                chosen = torch.from_numpy(rng.choice(len(clips), size=size, replace=False))
                video = torch.stack([training.to_video(c.numpy()) for c in clips[chosen]]).to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return training.decoder_loss(self.vae, latents[chosen].to(self.device), video, self.cfg.vae_focus)
            # long clips train the causal layers with their whole history filled, as in long videos
            frames = int(rng.choice(self.cfg.vae_frames))
            interval = int(rng.choice(self.preset.video.frame_intervals))
            clips = [self.source.clip(int(rng.integers(1 << 30)), (frames - 1) * interval + 1)[0][::interval]
                     for _ in range(max(2, batch * 9 // frames) if frames > 9 else batch)]
            video = torch.stack([training.to_video(c) for c in clips]).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return training.vae_loss(self.vae, video, self.cfg.vae_kl_weight, self.cfg.vae_focus, decoder_only)

        self._loop("decoder" if decoder_only else "vae", steps, lr, named, step, resume)
        if decoder_only:
            return
        mean, std = training.latent_statistics(self.vae, self.source, min(64, self.cache_size), 9,
                                               first_index=10_000_000)
        self.state = dataclasses.replace(self.state, latents_mean=tuple(mean), latents_std=tuple(std))
        self._set_vae_stats()

    def _decoder_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``train.decoder_dit_pairs`` clips of ``train.decoder_dit_frames`` frames at the coarsest level, and the
        latents the run's DiT denoises from each noised to a strength in ``train.decoder_dit_strength``, with the
        preset's sampler (guidance included): ``(latents [N, z, F, h, w] normalised, clips [N, T, H, W, 3] uint8)``.
        Made once and kept in ``out/cache``, keyed by what they depend on, so a resumed phase reads them back. Under
        torchrun the ranks share the pairs out and gather them, so every rank holds (and caches) the same ones."""
        from tempo_cli.pipeline import LevelSampling, denoise_level, level_conditions
        from tempo_cli.plan import make_plan

        count, frames = self.cfg.decoder_dit_pairs, self.cfg.decoder_dit_frames
        low, high = self.cfg.decoder_dit_strength
        video, interval, rank = self.preset.video, self.preset.video.frame_intervals[0], distributed.rank()
        settings = LevelSampling.for_level(self.preset, interval)
        path = self.out / "cache" / f"decoder-pairs-rank{rank}.safetensors"
        key = {"format": "2", "vae": _encoder_fingerprint(self.vae), "dit": _fingerprint(self.dit),
               "count": str(count), "strength": json.dumps([low, high]), "seed": str(self.seed),
               "data": self.source.identity, "sampler": _changed_fields(settings),
               "negative": self.preset.sampler.negative_prompt, "frames": str(frames)}
        if _matching_metadata(path, key) is not None:
            self.progress.log(f"decoder: using the DiT's latents of {count} clips in {path}")
            tensors = load_file(str(path))
            return tensors["latents"], tensors["clips"]
        level = make_plan(frames, (interval,), (1,), height=video.height, width=video.width,
                          base_fps=video.fps).levels[0]
        conditions = level_conditions(self.vae, level, None, {}, video.height, video.width)
        rng = np.random.default_rng([self.seed, 6])
        draws = [(int(rng.integers(1 << 31)), float(rng.uniform(low, high))) for _ in range(count)]  # seed, strength

        def clip_of(n: int) -> tuple[np.ndarray, str]:
            clip, caption = self.source.clip(DECODER_PAIR_CLIPS + n, (frames - 1) * interval + 1)
            return np.ascontiguousarray(clip[::interval]), caption

        mine = distributed.my_share(list(range(count)))
        made, rendered = {}, {}
        shown = f" ({len(mine)} on this rank)" if len(mine) < count else ""
        with self._evaluating(), torch.autocast(self.device.type, dtype=torch.bfloat16), torch.no_grad(), \
                self.progress.task(f"decoder: the DiT's latents of {count} clips{shown}", len(mine)) as advance:
            for n in mine:
                rendered[n], caption = clip_of(n)
                clean = self.vae.encode(training.to_video(rendered[n])[None].to(self.device))[0]
                embeds, negative = self._prompt_embeds(caption, settings.guided)
                (latent,) = denoise_level(self.dit, level, conditions, embeds, negative, settings, seed=draws[n][0],
                                          start=[clean], strength=draws[n][1], shared=False)
                made[n] = latent.to(torch.bfloat16)
                advance(1)
        made = distributed.gather(made)  # the other ranks' clips are rendered again here: cheaper than sending them
        pairs = (torch.stack([made[n] for n in range(count)]),
                 torch.stack([torch.from_numpy(rendered[n] if n in rendered else clip_of(n)[0]) for n in range(count)]))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"latents": pairs[0], "clips": pairs[1]}, path, key)
        return pairs

    def _prompt_embeds(self, caption: str, guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sampler's prompt and (with guidance) negative prompt embeddings ``[text_len, dim]`` of ``caption``,
        as ``tempo generate`` makes them: an empty negative prompt is a zero embedding."""
        from tempo_cli.models.text_encoder import encode_prompts

        negative_prompt = self.preset.sampler.negative_prompt
        with_negative = guided and bool(negative_prompt.strip())
        texts = [caption, negative_prompt] if with_negative else [caption]
        embeds = encode_prompts(self.text_encoder, self.tokenizer, texts, device=self.device).float()
        return embeds[0], (embeds[1] if with_negative else torch.zeros_like(embeds[0])) if guided else None

    def _set_vae_stats(self) -> None:
        if self.state.latents_mean:
            vae_config = dataclasses.replace(self.preset.vae, latents_mean=self.state.latents_mean,
                                             latents_std=self.state.latents_std)
            self.preset = dataclasses.replace(self.preset, vae=vae_config)
            self.vae.config = vae_config

    def _draw(self, step: int) -> tuple[int, int]:
        """Which set of clips a DiT phase trains on at ``step``: (extension round, refresh), so that every
        ``--more`` round and, with ``train.cache_refresh``, every that many steps bring clips never seen before."""
        refresh = self.cfg.cache_refresh
        return self.state.round, step // refresh if refresh else 0

    def _layouts(self, phase: str, draw: tuple[int, int] = (0, 0)) -> list[training.ClipLayout]:
        """The clip layouts of a phase's cache, drawn from the run's seed (the same on every resume)."""
        intervals = self.preset.video.frame_intervals
        rng = np.random.default_rng([self.seed, 2 if phase == "stage1" else 3, distributed.rank()]
                                    + (list(draw) if draw != (0, 0) else []))
        if phase == "stage1":
            return [training.stage1_layout(rng, self.cfg, intervals[-1]) for _ in range(self.cache_size)]
        return [training.stage2_layout(rng, self.cfg, intervals) for _ in range(self.cache_size)]

    def prepared(self, phase: str, draw: tuple[int, int] = (0, 0)) -> dict[int, training.Prepared]:
        """The encoded samples of a DiT phase: read from ``out/cache/<phase>-rank<r>.safetensors`` when it was made
        by this VAE from the same data and layout settings, else encoded now and saved there (``tempo train
        --prepare`` does only this). A later ``draw`` (see :meth:`_draw`) is a new set of clips, in
        ``<phase>-rank<r>-draw<round>.<refresh>.safetensors``; the draws before it are deleted (the first is kept)."""
        self._set_vae_stats()
        self.vae.eval().requires_grad_(False)
        rank = distributed.rank()
        suffix = f"-draw{draw[0]}.{draw[1]}" if draw != (0, 0) else ""
        path = self.out / "cache" / f"{phase}-rank{rank}{suffix}.safetensors"
        layout_fields = ("clip_frames", "min_clip_frames", "max_conditioned", "stage2_multimask", "stage2_levels")
        key = {"format": CACHE_FORMAT, "vae": _encoder_fingerprint(self.vae), "size": str(self.cache_size),
               "seed": str(self.seed), "data": self.source.identity, "intervals": json.dumps(self.preset.video.frame_intervals),
               "layouts": json.dumps({k: getattr(self.cfg, k) for k in layout_fields}),
               **({"shape_contrast": "spare-objects" if self.cfg.shape_contrast_spare_objects else "yes"}
                  if self._swaps_shapes() else {}),
               **({"length_power": str(float(self.cfg.length_power))} if self.cfg.length_power != 1 else {})}
        # the draw is in the name; settings at their defaults stay out, so caches made before them stay valid
        for old in path.parent.glob(f"{phase}-rank{rank}-draw*.safetensors") if suffix else ():
            if old != path:
                old.unlink()
        if (meta := _matching_metadata(path, key)) is not None:
            self.progress.log(f"{phase}: using the {self.cache_size} encoded clips in {path}")
            return _read_cache(path, json.loads(meta["captions"]), self._swaps_shapes())
        if draw[1] >= DRAW_SPAN:
            raise UsageError(f"train.cache_refresh {self.cfg.cache_refresh} draws more than {DRAW_SPAN} sets of clips "
                             "in one round", hint="refresh less often")
        if draw != (0, 0):
            self.progress.log(f"{phase}: {self.cache_size} new clips ({suffix[1:]})")
        offset = ((rank + 1) * 1_000_000 + (0 if phase == "stage1" else 500_000)
                  + CLIPS_PER_DRAW * (draw[0] * DRAW_SPAN + draw[1]))
        with self.progress.task(f"{phase}: encoding {self.cache_size} clips", self.cache_size) as advance, \
                torch.autocast(self.device.type, dtype=torch.bfloat16):
            data = training.prepare(self.source, self.vae, self._layouts(phase, draw), offset, advance,
                                    shape_contrast=self._swaps_shapes(),
                                    spare_objects=self.cfg.shape_contrast_spare_objects)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{n}.{name}": getattr(g, name) for n, g in data.items()
                   for name in ("targets", "conditions", "intervals", "focus", "shape_delta")
                   if getattr(g, name) is not None}
        atomic_save(tensors, path, {**key, "captions": json.dumps({n: g.captions for n, g in data.items()})})
        return data

    def _swaps_shapes(self) -> bool:
        """Whether the DiT's clips are also encoded with their shapes swapped (train.shape_contrast or
        train.shape_focus reads the difference)."""
        return self.cfg.shape_contrast > 0 or self.cfg.shape_focus > 0

    def _train_dit(self, phase: str, steps: int, lr: float, resume) -> None:
        from tempo_cli.models.text_encoder import encode_prompts
        from tempo_cli.toyworld import SHAPE_CYCLE, swap_words

        current: dict = {}  # the draw of clips trained on now, and its batches

        def next_batch(i: int):
            draw = self._draw(i)
            if current.get("draw") != draw:
                current.clear()  # the old draw's tensors go before the new draw's are encoded
                batch_rng = np.random.default_rng([self.seed, 4, distributed.rank(), i]
                                                  + ([self.state.round] if self.state.round else []))
                current.update(draw=draw, stream=training.batches(self.prepared(phase, draw), self.cfg, batch_rng))
            return next(current["stream"])

        torch_rng = torch.Generator().manual_seed(self.seed * 7919 + distributed.rank() + self.state.step
                                                  + 1_000_003 * self.state.round)
        named = {f"dit.{k}": p for k, p in self.dit.named_parameters()}
        if self.cfg.text_encoder_lr > 0:
            named.update({f"text_encoder.{k}": p for k, p in self.text_encoder.named_parameters()})
        text_len = self.preset.text_encoder.text_len

        def step(i: int):
            target, condition, step_intervals, captions, focus, shape_delta = next_batch(i)
            t = training.sample_frame_timesteps(torch_rng, len(captions), target.shape[2], self.cfg.timestep_shift,
                                                training.frame_noise_shares(self.preset, step_intervals),
                                                self.cfg.frame_noise_mode, self.cfg.frame_noise_lag)
            noise = training.training_noise(torch_rng, target.shape, step_intervals, self.preset)
            rope = training.rope_positions(torch_rng, step_intervals, target.shape[2], self.cfg.t_max)
            keep = (torch.rand(len(captions), generator=torch_rng) >= self.cfg.caption_dropout).float()
            weights = None
            if self.cfg.dit_focus or self.cfg.shape_focus:
                weights = (1 + self.cfg.dit_focus * focus
                           + (self.cfg.shape_focus * training.shape_cells(shape_delta) if self.cfg.shape_focus
                              else 0)).to(self.device)
            exaggerate = (self.cfg.shape_contrast * shape_delta).to(self.device) if self.cfg.shape_contrast else None
            others = [swap_words(c, SHAPE_CYCLE) for c in captions] if self.cfg.caption_contrast else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                context = encode_prompts(self.text_encoder, self.tokenizer, captions, text_len, self.device)
                context = context * keep.to(self.device)[:, None, None]  # a dropped caption: the empty prompt
                swapped_context = swapped = None
                if others is not None:  # a dropped caption, or one without shape words, has nothing to swap
                    swapped = keep * torch.tensor([o != c for o, c in zip(others, captions)]).float()
                if swapped is not None and bool(swapped.any()):
                    swapped_context = encode_prompts(self.text_encoder, self.tokenizer, others, text_len, self.device)
                terms = training.flow_matching_terms(self.dit, target.to(self.device), condition.to(self.device),
                                                     context, rope.to(self.device), t.to(self.device),
                                                     noise.to(self.device), weights,
                                                     training.contrasts(self.cfg, target.shape[2]),
                                                     exaggerate=exaggerate, swapped_context=swapped_context,
                                                     swapped=None if swapped is None else swapped.to(self.device),
                                                     margin=self.cfg.caption_contrast_margin)
            # the loss the optimiser sees can go negative; the log keeps the terms, the first one comparable
            # with runs trained without the contrastive term
            info = {} if terms.other is None else {"flow": terms.flow.detach(), "other": terms.other.detach()}
            loss = training.contrastive_loss(terms.flow, terms.other, self.cfg.contrastive)
            if terms.caption is not None:
                info = {"flow": terms.flow.detach(), **info, "caption": terms.caption.detach()}
                loss = loss + self.cfg.caption_contrast * terms.caption
            return loss, info  # the info's tensors are read when logged

        self._loop(phase, steps, lr, named, step, resume, ema_model=self.dit)

    def _train_classifier(self, steps: int, lr: float, resume) -> None:
        """The classifier phase: the shape classifier learns, from the frames the VAE decodes from the stage-2
        clips' first :data:`CLASSIFIER_LATENT_FRAMES` latent frames (:func:`~tempo_cli.models.classifier.augment`ed
        anew each step), which shape each object of the clip's caption has, given its colour, and, for 1 question
        in 4, that a colour the caption does not name is absent (half of these the palette's nearest to a named
        one). It starts from random weights (from the run's seed) unless resumed or extended; 1 clip in 20 is held
        out, and the accuracy on its frames is logged at the end."""
        from tempo_cli.loading import build_random
        from tempo_cli.models.classifier import ABSENT, COLOUR_NAMES, ShapeClassifier, augment, prompt_targets
        from tempo_cli.toyworld import COLOURS

        if resume is None and not self.state.round:
            fresh = build_random(lambda: ShapeClassifier(self.preset.classifier), self.seed * 7919 + 3)
            _load_weights(self.classifier, fresh.state_dict())
        self.classifier.train().requires_grad_(True)
        frames, named, held = [], [], []  # per decoded frame: uint8 pixels, colour -> shape of the caption
        groups = list(self.prepared("stage2").values())
        total = sum(len(g.captions) for g in groups)
        with self.progress.task("classifier: decoding the clips", total) as advance:
            count = 0
            for group in groups:
                for clip, caption in enumerate(group.captions):
                    targets = prompt_targets(caption)
                    if targets is None:
                        raise UsageError(f"the classifier phase learns the toy world's shapes, and the caption "
                                         f"{caption!r} is not a toy-world caption",
                                         hint="train it with --data toyworld")
                    latent = group.targets[clip][None, :, :CLASSIFIER_LATENT_FRAMES]
                    with torch.inference_mode():
                        video = self.vae.decode(latent.to(self.device))[0].float().cpu()  # [3, T, H, W]
                    frames.append(((video.transpose(0, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
                    colours = [c for c, _ in targets]
                    # two objects of one colour: which the colour means is unknown, so neither is asked about
                    shapes = {c: s for c, s in targets if colours.count(c) == 1}
                    named += [(shapes, set(colours))] * video.shape[1]
                    held += [count % 20 == 19] * video.shape[1]
                    count += 1
                    advance(1)
        frames_t = torch.cat(frames)  # [N, 3, H, W] uint8
        held_t = torch.tensor(held)
        train_idx, test_idx = (~held_t).nonzero().flatten(), held_t.nonzero().flatten()
        if not len(train_idx):
            raise UsageError("the classifier phase found no clip to learn from", hint="give it more clips (--cache)")
        self.progress.log(f"classifier: {len(train_idx)} decoded frames to learn from, {len(test_idx)} held out")
        batch = self.cfg.classifier_batch

        palette = torch.tensor([COLOURS[name] for name in COLOUR_NAMES], dtype=torch.float32)
        nearest = (palette[:, None] - palette[None]).square().sum(-1).fill_diagonal_(float("inf")).argmin(1).tolist()

        def questions(picks: torch.Tensor, rng: torch.Generator, absent_share: float):
            """Per frame a colour and its answer: a named object's shape, or ABSENT for a colour not named, half
            of the time the one nearest to a named colour (orange for a red object), so that hue counts."""
            colour, answer = [], []
            draws = torch.rand(len(picks), 2, generator=rng).tolist()
            for i, (draw, near) in zip(picks.tolist(), draws):
                shapes, present = named[i]
                missing = [c for c in range(len(COLOUR_NAMES)) if c not in present]
                close = [nearest[c] for c in sorted(present) if nearest[c] not in present]
                if draw < absent_share or not shapes:
                    pool = close if close and near < 0.5 else missing
                    colour.append(pool[int(torch.randint(len(pool), (1,), generator=rng))])
                    answer.append(ABSENT)
                else:
                    known = sorted(shapes)
                    colour.append(known[int(torch.randint(len(known), (1,), generator=rng))])
                    answer.append(shapes[colour[-1]])
            return torch.tensor(colour), torch.tensor(answer)

        def step(i: int):  # each step's draws from its own seed, so a resumed run draws what it would have
            rng = torch.Generator().manual_seed(
                self.seed * 7919 + 11 + distributed.rank() + 1_000_003 * self.state.round + 7 * i)
            pick = train_idx[torch.randint(len(train_idx), (batch,), generator=rng)]
            colour, answer = questions(pick, rng, 0.25)
            pixels = augment(frames_t[pick].float() / 127.5 - 1, rng)
            logits = self.classifier(pixels.to(self.device), colour.to(self.device))
            return torch.nn.functional.cross_entropy(logits.float(), answer.to(self.device)), {}

        self._loop("classifier", steps, lr, {f"classifier.{k}": p for k, p in self.classifier.named_parameters()},
                   step, resume)
        if len(test_idx):
            colour, answer = questions(test_idx, torch.Generator().manual_seed(0), 0.25)
            right = self.classifier_accuracy(frames_t[test_idx], colour, answer)
            shown = answer != ABSENT
            self.progress.log(f"classifier: held-out accuracy {right[shown].mean().item():.1%} on shapes, "
                              f"{right[~shown].mean().item():.1%} on absent colours")

    @torch.no_grad()
    def classifier_accuracy(self, frames: torch.Tensor, colours: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Whether the shape classifier answers each question right: uint8 ``frames`` ``[N, 3, H, W]``, asked
        about ``colours`` ``[N]``, whose answers (a shape's index, or ABSENT) are ``answers`` ``[N]``."""
        was = self.classifier.training
        self.classifier.eval()
        right = []
        for i in range(0, len(frames), 256):
            pixels = (frames[i:i + 256].float() / 127.5 - 1).to(self.device)
            logits = self.classifier(pixels, colours[i:i + 256].to(self.device))
            right.append(logits.argmax(dim=1).cpu() == answers[i:i + 256])
        self.classifier.train(was)
        return torch.cat(right).float()

    def _classifier_trained(self) -> bool:
        """Whether the run's classifier is worth exporting: trained here, or read from the preset's file."""
        weights = self.preset.weights
        return self.classifier is not None and ("classifier" in self.state.done
                                                or (not weights.is_random and bool(weights.classifier)))

    # ---- samples ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def write_sample(self, phase: str, step: int, ema: dict[str, torch.Tensor] | None = None) -> Path:
        """A look at the model being trained, ``out/samples/<phase>-<step>.mp4``: for the VAE, clips beside their
        reconstructions; for the DiT, a 2-second blueprint of the first training caption, beside its clip
        (``<phase>-more<round>-<step>.mp4`` in a phase's extensions). Every
        rank takes part (under torchrun a level's chunks are shared out); rank 0 writes. With ``ema``, the DiT
        samples with its EMA weights (what the export will hold), then gets its training weights back."""
        from tempo_cli.video import to_uint8_frames, write_video

        interval = self.preset.video.frame_intervals[0]
        clip, caption = self.source.clip(0, 12 * interval + 1)
        truth = training.to_video(clip[::interval]).to(self.device)  # [3, 13, H, W]
        with self._evaluating():
            if phase in ("vae", "decoder"):
                mu, _ = self.vae.posterior(truth[None])
                made = self.vae.reconstruct(mu)[0].clamp(-1, 1)
            else:
                with _weights_swapped_in(self.dit, ema):
                    made = self._sample_blueprint(caption, truth.shape[1], interval)
        name = f"{phase}-{step:06d}" if not self.state.round else f"{phase}-more{self.state.round}-{step:06d}"
        path = self.out / "samples" / f"{name}.mp4"
        if not distributed.is_main():
            return path
        path.parent.mkdir(exist_ok=True)
        side_by_side = torch.cat([truth, made.to(truth.dtype)], dim=3)  # [3, T, H, 2W]
        write_video(to_uint8_frames(side_by_side), path, self.preset.video.fps / interval, force=True)
        return path

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Every network in eval mode inside the block, and in the mode each was in after it."""
        was_training = {name: model.training for name, model in self._models().items()}
        for model in self._models().values():
            model.eval()
        try:
            yield
        finally:
            for name, model in self._models().items():
                model.train(was_training[name])

    def _sample_blueprint(self, caption: str, frames: int, interval: int) -> torch.Tensor:
        from tempo_cli.pipeline import LevelSampling, decode_level, denoise_level, level_conditions
        from tempo_cli.plan import make_plan

        video = self.preset.video
        level = make_plan(frames, (interval,), (1,), height=video.height, width=video.width,
                          base_fps=video.fps).levels[0]
        settings = LevelSampling.for_level(self.preset, interval)
        embeds, negative = self._prompt_embeds(caption, settings.guided)
        conditions = level_conditions(self.vae, level, None, {}, video.height, video.width)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            latents = denoise_level(self.dit, level, conditions, embeds, negative, settings, seed=0)
        return decode_level(self.vae, level, latents).to(self.device)

    # ---- the result ---------------------------------------------------------------------------------------------

    def export_checkpoint(self, dest: Path, average: Preset | None = None, weight: float = 0.5) -> str:
        """Write the run's latest checkpoint as a preset folder ``dest``, as :meth:`export` writes a finished run:
        a DiT phase that has not finished gives its EMA weights (what its export will hold), or its training
        weights where it keeps no EMA. With ``average``, the DiT and text encoder are first averaged with that
        trained preset's (:meth:`average_with`, ``weight`` of the way to it). Reads the checkpoint only, so it works
        while the run trains on; returns what was exported, in words."""
        tensors = self.load_checkpoint(announce=False)
        if tensors is None:
            raise UsageError(f"--export: {self.out} holds no checkpoint ({CHECKPOINT})",
                             hint="name the --out folder of a run that has saved at least one checkpoint")
        state = self.state
        what = f"phases: {', '.join(state.done) or 'none'}"
        if state.phase and state.phase not in state.done:  # stopped, or still training, inside a phase
            what += f"; {state.phase} at step {state.step}" + (f" of {state.length}" if state.length else "")
            what += f" in extension round {state.round}" if state.round else ""
            ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
            if state.phase in ("stage1", "stage2") and ema:
                _load_weights(self.dit, ema)
                what += ", EMA weights"
        if average is not None:
            self.average_with(average, weight)
            what += f"; DiT and text encoder averaged with {average.name}'s (weight {weight:g} of {average.name})"
        self.export(dest, what)
        return what

    def export(self, dest: Path | None = None, what: str | None = None) -> None:
        """Write the weights (in ``export_dtype``) and ``preset.yaml`` that load the trained model into ``dest``
        (default ``out``: ``--preset out/preset.yaml``; the weights are found beside it). ``what`` says in the
        preset's description what was trained (default: the phases done)."""
        if not distributed.is_main():
            return
        dest = self.out if dest is None else dest
        dest.mkdir(parents=True, exist_ok=True)
        from tempo_cli.models.text_encoder import native_key
        from tempo_cli.presets import resolved_dict
        from tempo_cli.tokenizers import BUILTIN_PREFIX

        self._set_vae_stats()

        def cast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(self.export_dtype) if v.is_floating_point() else v for k, v in state.items()}

        atomic_save(cast(self.dit.state_dict()), dest / WEIGHT_FILES["dit"])
        atomic_save(cast(self.vae.state_dict()), dest / WEIGHT_FILES["vae"])
        text = {native_key(k): v for k, v in self.text_encoder.model.state_dict().items() if native_key(k)}
        atomic_save(cast(text), dest / WEIGHT_FILES["text_encoder"])
        tokenizer = self.preset.weights.tokenizer
        if not tokenizer.startswith(BUILTIN_PREFIX):  # a built-in tokenizer is named, not copied
            self.tokenizer.save_pretrained(str(dest / "tokenizer"))
            tokenizer = "tokenizer"
        data = resolved_dict(self.preset)
        data.pop("name")
        data["weights"] = {**WEIGHT_FILES, "tokenizer": tokenizer}
        if self._classifier_trained():
            atomic_save(cast(self.classifier.state_dict()), dest / CLASSIFIER_FILE)
            data["weights"]["classifier"] = CLASSIFIER_FILE
        else:  # no classifier worth a file: none, no classifier guidance, and no phase to train one
            data.pop("classifier", None)
            data["sampler"]["classifier_scale"] = []
            if data.get("train"):
                data["train"]["classifier_steps"] = 0
        what = what or f"phases: {', '.join(self.state.done) or 'none'}"
        base = self.preset.description.split(TRAINED_BY)[0]  # a run started from its own export says it once
        data["description"] = f"{base}{TRAINED_BY}({what}) on {self.source.identity}."
        import yaml

        partial = dest / "preset.yaml.partial"
        partial.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(partial, dest / "preset.yaml")
