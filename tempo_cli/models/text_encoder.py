"""The UMT5-XXL text encoder, run through transformers' ``UMT5EncoderModel``.

The release ships the encoder in Wan's native ``T5Encoder`` layout (``models_t5_umt5-xxl-enc-bf16.pth``). The
architecture is UMT5's: gated-GELU feed-forward (tanh approximation), no 1/sqrt(d) attention scaling, a relative
position bias in every layer, RMS norms with eps 1e-6, no dropout. Renaming the native keys into transformers'
names is the one conversion tempo does; it lives in :data:`NATIVE_TO_HF` and nowhere else.

Prompts become context the DiT reads as ``[B, text_len, dim]`` with every position past a prompt's last token
set to zero, as the release does.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from tempo_cli.config import TextEncoderConfig
from tempo_cli.errors import CheckpointError, ConfigError

# Native key -> transformers key. Per-block entries apply to ``blocks.{N}.<key>`` and land under
# ``encoder.block.{N}.``. ``ffn.gate`` is the GELU branch (``wi_0``), ``ffn.fc1`` the linear one (``wi_1``).
NATIVE_TO_HF: dict[str, str] = {
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
    "blocks.{N}.norm1.weight": "encoder.block.{N}.layer.0.layer_norm.weight",
    "blocks.{N}.attn.q.weight": "encoder.block.{N}.layer.0.SelfAttention.q.weight",
    "blocks.{N}.attn.k.weight": "encoder.block.{N}.layer.0.SelfAttention.k.weight",
    "blocks.{N}.attn.v.weight": "encoder.block.{N}.layer.0.SelfAttention.v.weight",
    "blocks.{N}.attn.o.weight": "encoder.block.{N}.layer.0.SelfAttention.o.weight",
    "blocks.{N}.pos_embedding.embedding.weight":
        "encoder.block.{N}.layer.0.SelfAttention.relative_attention_bias.weight",
    "blocks.{N}.norm2.weight": "encoder.block.{N}.layer.1.layer_norm.weight",
    "blocks.{N}.ffn.gate.0.weight": "encoder.block.{N}.layer.1.DenseReluDense.wi_0.weight",
    "blocks.{N}.ffn.fc1.weight": "encoder.block.{N}.layer.1.DenseReluDense.wi_1.weight",
    "blocks.{N}.ffn.fc2.weight": "encoder.block.{N}.layer.1.DenseReluDense.wo.weight",
}

# ``UMT5EncoderModel`` registers the token embedding twice (``encoder.embed_tokens`` is tied to ``shared``); the
# alias is in its state dict but is not a separate tensor, so the checkpoint only fills ``shared``.
_TIED_ALIAS = "encoder.embed_tokens.weight"

_BLOCK = re.compile(r"(blocks|encoder\.block)\.(\d+)\.(.+)")


def _translate(key: str, table: Mapping[str, str]) -> str | None:
    """Rename ``key`` through ``table`` (with its ``{N}`` block pattern); ``None`` when nothing matches."""
    if key in table:
        return table[key]
    match = _BLOCK.fullmatch(key)
    if match is None:
        return None
    prefix, index, rest = match.groups()
    pattern = f"{prefix}.{{N}}.{rest}"
    return table[pattern].replace("{N}", index) if pattern in table else None


_HF_TO_NATIVE = {hf: native for native, hf in NATIVE_TO_HF.items()}


def hf_key(native_key: str) -> str | None:
    """The ``UMT5EncoderModel`` name of a native checkpoint key, or ``None`` if the key is not a native one."""
    return _translate(native_key, NATIVE_TO_HF)


def native_key(hf_name: str) -> str | None:
    """The inverse of :func:`hf_key`."""
    return _translate(hf_name, _HF_TO_NATIVE)


def umt5_config(config: TextEncoderConfig) -> UMT5Config:
    """The transformers config of the encoder described by ``config``."""
    return UMT5Config(
        vocab_size=config.vocab, d_model=config.dim, d_kv=config.dim_attn // config.num_heads, d_ff=config.dim_ffn,
        num_layers=config.num_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.num_buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
    )


def text_encoder_config(hf: UMT5Config, text_len: int = 512) -> TextEncoderConfig:
    """The inverse of :func:`umt5_config`: tempo's config of a transformers UMT5 config."""
    return TextEncoderConfig(vocab=hf.vocab_size, dim=hf.d_model, dim_attn=hf.d_kv * hf.num_heads, dim_ffn=hf.d_ff,
                             num_heads=hf.num_heads, num_layers=hf.num_layers,
                             num_buckets=hf.relative_attention_num_buckets, text_len=text_len)


def _first(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


class TextEncoder(nn.Module):
    """UMT5 encoder: token ids ``[B, L]`` and mask ``[B, L]`` -> final-norm hidden states ``[B, L, dim]``."""

    def __init__(self, model: UMT5EncoderModel, config: TextEncoderConfig):
        super().__init__()
        self.model = model
        self.config = config

    @classmethod
    def from_native(cls, state_dict: Mapping[str, torch.Tensor], config: TextEncoderConfig,
                    dtype: torch.dtype | None = None) -> "TextEncoder":
        """Build from a native (``T5Encoder``) state dict without allocating the weights a second time.

        The model is created on the meta device and the checkpoint's tensors are assigned into it, so with
        ``dtype=None`` the result shares their memory. A ``dtype`` converts tensor by tensor (a copy of each).
        """
        with torch.device("meta"):
            model = UMT5EncoderModel(umt5_config(config))
        expected = {k: v.shape for k, v in model.state_dict().items() if k != _TIED_ALIAS}

        renamed: dict[str, torch.Tensor] = {}
        unexpected = []
        for key, tensor in state_dict.items():
            name = hf_key(key)
            if name is None or name not in expected:
                unexpected.append(key)
            else:
                renamed[name] = tensor
        missing = [native_key(k) or k for k in expected if k not in renamed]
        hint = (f"expected a UMT5 encoder in the native T5Encoder format with {config.num_layers} layers "
                f"(models_t5_umt5-xxl-enc-bf16.pth)")
        if missing:
            raise CheckpointError(f"text encoder checkpoint is missing {len(missing)} key(s): {_first(missing)}",
                                  hint=hint)
        if unexpected:
            raise CheckpointError(
                f"text encoder checkpoint has {len(unexpected)} unexpected key(s): {_first(unexpected)}", hint=hint)
        for name, tensor in renamed.items():
            if tensor.shape != expected[name]:
                raise CheckpointError(
                    f"text encoder weight {native_key(name)!r} has shape {tuple(tensor.shape)}, "
                    f"the config needs {tuple(expected[name])}", hint=hint)
            if dtype is not None:
                renamed[name] = tensor.to(dtype)

        model.load_state_dict(renamed, strict=False, assign=True)
        model.encoder.embed_tokens = model.shared  # re-tie: assign replaced ``shared``'s parameter
        return cls(model.eval().requires_grad_(False), config)  # frozen for inference; training unfreezes

    @classmethod
    def from_pretrained_folder(cls, folder: str | Path, dtype: torch.dtype | None = None,
                               text_len: int = 512) -> "TextEncoder":
        """Load a transformers-format folder (``config.json`` and safetensors weights), never the hub."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} is not a transformers model folder: no config.json",
                                  hint="point to a folder written by save_pretrained, or load the native .pth")
        try:
            raw = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from None
        if raw.get("model_type") != "umt5" or raw.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
            raise CheckpointError(
                f"{folder} holds a {raw.get('model_type')!r} model with {raw.get('feed_forward_proj')!r} "
                "feed-forward", hint="tempo needs a gated-gelu UMT5 encoder (model_type 'umt5')")
        hf = UMT5Config.from_pretrained(folder, local_files_only=True)
        model, info = UMT5EncoderModel.from_pretrained(folder, config=hf, dtype=dtype, local_files_only=True,
                                                       output_loading_info=True)
        missing = [k for k in info["missing_keys"] if k != _TIED_ALIAS]
        if missing or info["unexpected_keys"] or info["mismatched_keys"]:
            problems = missing or info["unexpected_keys"] or [str(m[0]) for m in info["mismatched_keys"]]
            raise CheckpointError(f"{folder} does not fit its config: {_first(problems)}")
        return cls(model.eval(), text_encoder_config(hf, text_len))

    def save_pretrained(self, folder: str | Path) -> None:
        """Write a transformers-format folder that :meth:`from_pretrained_folder` reads back."""
        self.model.save_pretrained(Path(folder))

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ids``, ``mask`` ``[B, L]`` -> hidden states ``[B, L, dim]``; padded positions are not zeroed."""
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local folder (the release's ``google/umt5-xxl`` files); never downloads."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder {folder} does not exist",
                              hint="download the release's google/umt5-xxl tokenizer files into it")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a tokenizer from {folder}: {exc}") from None


def clean_prompt(text: str) -> str:
    """Undo HTML escapes (twice, for double-escaped text), collapse whitespace runs to one space and strip."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def encode_prompts(encoder: TextEncoder, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   text_len: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Prompts -> text context ``[B, text_len, dim]`` with positions past each prompt's tokens set to zero.

    ``text_len`` defaults to the encoder config's (512 in the release); ``device`` to the encoder's.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ConfigError("no prompt given", hint="pass at least one non-empty prompt")
    cleaned = [clean_prompt(p) for p in prompts]
    for i, text in enumerate(cleaned):
        if not text:
            raise ConfigError(f"prompt {i} is empty after whitespace cleaning: {prompts[i]!r}",
                              hint="write a prompt with some text in it")
    text_len = encoder.config.text_len if text_len is None else text_len
    device = encoder.device if device is None else torch.device(device)
    tokens = tokenizer(cleaned, padding="max_length", truncation=True, max_length=text_len,
                       add_special_tokens=True, return_tensors="pt")
    ids = tokens["input_ids"].to(device)  # [B, text_len]
    mask = tokens["attention_mask"].to(device)  # [B, text_len]
    trainable = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
    with torch.set_grad_enabled(trainable):  # gradients only when the encoder is being trained
        hidden = encoder(ids, mask)  # [B, text_len, dim]
    lengths = mask.gt(0).sum(dim=1)  # [B]
    keep = torch.arange(text_len, device=device)[None, :] < lengths[:, None]  # [B, text_len]
    return hidden.masked_fill(~keep[..., None], 0.0)
