"""Tokenizers: the release's UMT5 tokenizer from a local folder, or one built in code for random-weight presets.

``builtin:bytes`` is a byte-level tokenizer made with the ``tokenizers`` library and nothing downloaded: ids 0, 1
and 2 are ``<pad>``, ``</s>`` and ``<unk>`` as in T5, id ``3 + b`` is byte value ``b``, and ``</s>`` ends every
sequence. It fits any text encoder whose vocabulary has at least :data:`BYTE_VOCAB_SIZE` entries.

``builtin:toy-words`` is a word-level tokenizer over the toy world's caption words (:func:`toy_words`, 30 tokens):
the same three specials, then one id per word, in a fixed order so that trained weights keep their meaning. Text is
lower-cased and split at whitespace and punctuation; a word outside the vocabulary is ``<unk>``.

``transformers`` is imported when a tokenizer is built, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tempo_cli.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BUILTIN_PREFIX = "builtin:"
BUILTIN_TOKENIZERS = ("builtin:bytes", "builtin:toy-words")
BYTE_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 of every built-in tokenizer, as in T5
TOY_FILLER_WORDS = ("a", "on", "and", "background")  # the toy captions' template words
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


def _word_pre_tokenizer():
    """Split at whitespace, then every punctuation character on its own: "ball," -> "ball", ","."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def build_word_tokenizer(words: Sequence[str], model_max_length: int = 512) -> "PreTrainedTokenizerFast":
    """A word-level tokenizer: ids 0, 1, 2 are ``<pad>``, ``</s>``, ``<unk>``, then ``words`` lower-cased, in order,
    repeats dropped. Text is lower-cased and split at whitespace and punctuation; ``</s>`` ends every sequence; padding
    is on the right with ``<pad>``. Each word must stay one piece under that split ("dark blue" is two words, and
    the specials are not words)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = _word_pre_tokenizer()
    vocab = {token: i for i, token in enumerate(BYTE_SPECIALS)}
    for word in words:
        word = word.lower()
        pieces = [piece for piece, _ in pre_tokenizer.pre_tokenize_str(word)]
        if pieces != [word]:
            raise ConfigError(f"cannot make the word {word!r} one token: the tokenizer splits it into {pieces}",
                              hint="give single words without spaces or punctuation")
        vocab.setdefault(word, len(vocab))
    if len(vocab) == len(BYTE_SPECIALS):
        raise ConfigError("a word tokenizer needs at least one word")
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, no space before ","
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])])
    tokenizer.add_special_tokens(list(BYTE_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length, padding_side="right")


def toy_words() -> tuple[str, ...]:
    """Every word of the toy world's captions, once, in a fixed order: the colours, shapes, motions and backgrounds
    of :mod:`tempo_cli.toyworld` split into words, then :data:`TOY_FILLER_WORDS`. The ids follow this order, so a
    name added to those constants shifts the ids of every later word, and models trained before no longer fit."""
    from tempo_cli.toyworld import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

    names = (*COLOURS, *SHAPES, *MOTIONS, *BACKGROUNDS, *TOY_FILLER_WORDS)
    return tuple(dict.fromkeys(word for name in names for word in name.lower().split()))


def build_toy_word_tokenizer(model_max_length: int = 512) -> "PreTrainedTokenizerFast":
    """The ``builtin:toy-words`` tokenizer: :func:`build_word_tokenizer` over :func:`toy_words`."""
    return build_word_tokenizer(toy_words(), model_max_length=model_max_length)


def unknown_words(tokenizer: "PreTrainedTokenizerBase", text: str) -> list[str]:
    """The pieces of ``text`` that ``tokenizer`` can only read as ``<unk>`` (in order, once each): the words a
    model over a small vocabulary, such as the toy model's, has never seen."""
    unk = tokenizer.unk_token_id
    if unk is None or not getattr(tokenizer, "is_fast", False):
        return []
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = [text[a:b] for i, (a, b) in zip(encoding["input_ids"], encoding["offset_mapping"]) if i == unk]
    return list(dict.fromkeys(p for p in pieces if any(c.isalnum() for c in p)))  # words, not punctuation


def load_any_tokenizer(spec: str | Path) -> "PreTrainedTokenizerBase":
    """A built-in tokenizer (``builtin:bytes``, ``builtin:toy-words``) or the tokenizer saved in a local folder;
    never downloads."""
    text = str(spec)
    if text.startswith(BUILTIN_PREFIX):
        if text not in BUILTIN_TOKENIZERS:
            raise ConfigError(f"unknown built-in tokenizer {text!r}",
                              hint=f"built-in tokenizers: {', '.join(BUILTIN_TOKENIZERS)}; or name a folder")
        return build_toy_word_tokenizer() if text == "builtin:toy-words" else build_byte_tokenizer()
    from tempo_cli.models.text_encoder import load_tokenizer

    return load_tokenizer(spec)
