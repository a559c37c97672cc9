"""Where models run and how they are held: device and dtype choice, and a store that loads each network
of a preset on first use and frees it when the stage is done with it."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import torch

from tempo_cli.config import Preset
from tempo_cli.errors import ConfigError, UsageError
from tempo_cli.loading import build_on_meta, build_random, load_into, random_identity, read_state_dict, \
    weights_identity

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 natively (AMX or AVX512-BF16), so bf16 beats fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str | None) -> torch.device:
    """``--device``: default CUDA when present, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r}", hint="e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here", hint="use --device cpu")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``--dtype``: default bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if name is None:
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype: unknown dtype {name!r}", hint="choose bf16, fp16 or fp32")
    return DTYPES[name]


class ModelStore:
    """The networks of one preset, each loaded when first asked for and dropped by :meth:`release`. ``announce``
    is called once, when a network is first asked for: a command says what model it runs (the toy notice) once
    its arguments have passed their checks, not before an error that stops it."""

    def __init__(self, preset: Preset, device: torch.device, dtype: torch.dtype, weights_dir: str | Path | None = None,
                 offload: bool = False, announce: Callable[[], None] | None = None):
        self.preset, self.device, self.dtype, self.weights_dir = preset, device, dtype, weights_dir
        self.offload = offload  # keep the DiT's blocks in CPU memory, each visiting the device for its forward
        self._announce = announce
        self._models: dict[str, object] = {}
        self._paths: dict[str, Path] | None = None

    def _in_use(self) -> None:
        if self._announce is not None:
            announce, self._announce = self._announce, None
            announce()

    @property
    def paths(self) -> dict[str, Path]:
        """The weight files (empty for random-weight presets); raises one error naming all missing files."""
        if self._paths is None:
            from tempo_cli.presets import find_weights

            self._paths = find_weights(self.preset, self.weights_dir)
        return self._paths

    @property
    def weights_id(self) -> str:
        weights = self.preset.weights
        return random_identity(weights.random_seed) if weights.is_random else weights_identity(self.paths)

    def dit(self):
        from tempo_cli.models.dit import MultiMaskDiT

        if "dit" not in self._models and self.offload and self.device.type != "cpu":
            from tempo_cli.offload import offload_blocks

            device, self.device = self.device, torch.device("cpu")
            try:
                model = self._get("dit", lambda: MultiMaskDiT(self.preset.dit))
            finally:
                self.device = device
            self._models["dit"] = offload_blocks(model, device)
        return self._get("dit", lambda: MultiMaskDiT(self.preset.dit))

    def vae(self):
        from tempo_cli.models.vae import CausalVideoVAE

        return self._get("vae", lambda: CausalVideoVAE(self.preset.vae))

    def classifier(self):
        """The preset's shape classifier (classifier guidance), in float32: it is small, and its gradient is what
        moves the latents. Random (seed 3) where the preset names no file for it: tempo train's starting point
        before one is trained."""
        from tempo_cli.models.classifier import ShapeClassifier

        preset = self.preset
        if preset.classifier is None:
            raise ConfigError(f"preset {preset.name} has no classifier section")
        untrained = not preset.weights.is_random and not preset.weights.classifier
        return self._get("classifier", lambda: ShapeClassifier(preset.classifier), dtype=torch.float32,
                         random=untrained).eval()

    def text_encoder(self):
        """``(encoder, tokenizer)``."""
        self._in_use()
        if "text_encoder" not in self._models:
            from tempo_cli.models.text_encoder import TextEncoder, umt5_config
            from tempo_cli.tokenizers import load_any_tokenizer
            from transformers import UMT5EncoderModel

            weights, config = self.preset.weights, self.preset.text_encoder
            if weights.is_random:
                encoder = build_random(lambda: TextEncoder(UMT5EncoderModel(umt5_config(config)), config),
                                       weights.random_seed + 2, dtype=self.dtype, device=self.device)
                tokenizer = load_any_tokenizer(weights.tokenizer)
            else:
                state = read_state_dict(self.paths["text_encoder"])
                for key in list(state):  # cast in place, one tensor at a time: never two copies of the model
                    state[key] = state[key].to(self.device, self.dtype)
                encoder = TextEncoder.from_native(state, config).eval().requires_grad_(False)
                tokenizer = load_any_tokenizer(self.paths.get("tokenizer", weights.tokenizer))  # or built in
            self._models["text_encoder"] = (encoder, tokenizer)
        return self._models["text_encoder"]

    def _get(self, name: str, factory, dtype: torch.dtype | None = None, random: bool = False):
        """The model ``name``, built by ``factory`` and loaded on first use (in ``dtype``, by default the store's):
        from its file, or with random weights for a random-weight preset or where ``random`` asks for them."""
        self._in_use()
        dtype = dtype or self.dtype
        if name not in self._models:
            weights = self.preset.weights
            if weights.is_random or random:
                offset = {"dit": 0, "vae": 1, "classifier": 3}[name]  # 2: the text encoder
                seed = (weights.random_seed if weights.is_random else 0) + offset
                model = build_random(factory, seed, dtype=dtype, device=self.device)
            else:
                path = self.paths[name]
                model = load_into(build_on_meta(factory), read_state_dict(path), source=str(path), dtype=dtype,
                                  device=self.device)
            self._models[name] = model
        return self._models[name]

    def release(self, *names: str) -> None:
        """Forget the named models (all if none named) and return their memory."""
        for name in names or list(self._models):
            self._models.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
