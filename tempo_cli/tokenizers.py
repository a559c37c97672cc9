"""Tokenizers: the release's UMT5 tokenizer from a local folder, or one built in code for random-weight presets.

``builtin:bytes`` is a byte-level tokenizer made with the ``tokenizers`` library and nothing downloaded: ids 0, 1
and 2 are ``<pad>``, ``</s>`` and ``<unk>`` as in T5, id ``3 + b`` is byte value ``b``, and ``</s>`` ends every
sequence. It fits any text encoder whose vocabulary has at least :data:`BYTE_VOCAB_SIZE` entries.

``transformers`` is imported when a tokenizer is built, not when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tempo_cli.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BUILTIN_PREFIX = "builtin:"
BUILTIN_TOKENIZERS = ("builtin:bytes",)
BYTE_SPECIALS = ("<pad>", "</s>", "<unk>")
BYTE_VOCAB_SIZE = len(BYTE_SPECIALS) + 256


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255: what the ``ByteLevel`` pre-tokenizer emits."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    unprintable = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(unprintable)) for b in range(256)]


def build_byte_tokenizer(model_max_length: int = 512) -> "PreTrainedTokenizerFast":
    """The ``builtin:bytes`` tokenizer: one token per UTF-8 byte, ``</s>`` appended, right padding with ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(BYTE_SPECIALS)}
    vocab.update({char: len(BYTE_SPECIALS) + b for b, char in enumerate(_byte_chars())})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: bytes stay apart
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])])
    tokenizer.add_special_tokens(list(BYTE_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length, padding_side="right")


def load_any_tokenizer(spec: str | Path) -> "PreTrainedTokenizerBase":
    """A built-in tokenizer (``builtin:bytes``) or the tokenizer saved in a local folder; never downloads."""
    text = str(spec)
    if text.startswith(BUILTIN_PREFIX):
        if text not in BUILTIN_TOKENIZERS:
            raise ConfigError(f"unknown built-in tokenizer {text!r}",
                              hint=f"built-in tokenizers: {', '.join(BUILTIN_TOKENIZERS)}; or name a folder")
        return build_byte_tokenizer()
    from tempo_cli.models.text_encoder import load_tokenizer

    return load_tokenizer(spec)
