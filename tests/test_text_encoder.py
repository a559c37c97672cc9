"""The UMT5 text encoder: the native key map, the reference outputs, folders, the tokenizer and prompt encoding."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tempo_cli.config import UMT5_XXL, TextEncoderConfig
from tempo_cli.errors import CheckpointError, ConfigError, TempoError
from tempo_cli.models.text_encoder import (
    NATIVE_TO_HF,
    TextEncoder,
    clean_prompt,
    encode_prompts,
    hf_key,
    load_tokenizer,
    native_key,
    umt5_config,
)

# float32 on CPU: transformers' SDPA path against the reference's own attention differs by ~6e-7.
ATOL = RTOL = 1e-5

WORDS = ["a", "cat", "dog", "&", "runs", "on", "the", "beach", "at", "sunset", "slowly"]


@pytest.fixture(scope="module")
def tiny(reference: Path) -> dict:
    path = reference / "t5_tiny.safetensors"
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["config"])
    tensors = load_file(path)
    config = TextEncoderConfig(**{k: meta[k] for k in ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads",
                                                        "num_layers", "num_buckets")})
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    return {"config": config, "weights": weights, **{k: tensors[k] for k in ("ids", "mask", "output")}}


@pytest.fixture(scope="module")
def encoder(tiny: dict) -> TextEncoder:
    return TextEncoder.from_native(tiny["weights"], tiny["config"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A word-level tokenizer built in code, saved to a folder and read back through AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return load_tokenizer(folder)


def manifest_keys(reference: Path) -> dict[str, tuple[int, ...]]:
    data = json.loads((reference / "checkpoint_manifest.json").read_text())
    return {k: tuple(v) for k, v in data["t5_umt5_xxl"].items()}


def xxl_model_shapes() -> dict[str, tuple[int, ...]]:
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(UMT5_XXL))
    assert model.encoder.embed_tokens.weight is model.shared.weight
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


# --- the key map -------------------------------------------------------------------------------------------------

def test_every_native_xxl_key_maps_to_a_umt5_key_of_the_same_shape(reference: Path) -> None:
    native = manifest_keys(reference)
    model = xxl_model_shapes()
    mapped = {hf_key(k): shape for k, shape in native.items()}
    assert None not in mapped, [k for k in native if hf_key(k) is None]
    assert set(mapped) == set(model), (set(mapped) ^ set(model))
    assert all(mapped[k] == model[k] for k in model), [k for k in model if mapped[k] != model[k]]


def test_the_xxl_checkpoint_loads_on_the_meta_device(reference: Path) -> None:
    state = {k: torch.empty(shape, dtype=torch.bfloat16, device="meta") for k, shape in manifest_keys(reference).items()}
    enc = TextEncoder.from_native(state, UMT5_XXL)
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight
    assert enc.dtype == torch.bfloat16
    assert sum(p.numel() for p in enc.parameters()) == sum(t.numel() for t in state.values())


def test_key_map_is_a_bijection(reference: Path) -> None:
    assert len(set(NATIVE_TO_HF.values())) == len(NATIVE_TO_HF)
    native = manifest_keys(reference)
    mapped = [hf_key(k) for k in native]
    assert len(set(mapped)) == len(native)
    assert all(native_key(hf_key(k)) == k for k in native)
    assert all(hf_key(native_key(k)) == k for k in xxl_model_shapes())


def test_gate_is_the_gelu_branch() -> None:
    assert hf_key("blocks.3.ffn.gate.0.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
    assert hf_key("blocks.3.ffn.fc1.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_1.weight"
    assert hf_key("blocks.3.ffn.gate.1.weight") is None
    assert hf_key("shared_pos.embedding.weight") is None


def test_umt5_config_is_the_release_architecture() -> None:
    hf = umt5_config(UMT5_XXL)
    assert (hf.d_model, hf.d_kv, hf.d_ff, hf.num_heads, hf.num_layers) == (4096, 64, 10240, 64, 24)
    assert hf.dense_act_fn == "gelu_new" and hf.is_gated_act
    assert hf.dropout_rate == 0.0 and hf.layer_norm_epsilon == 1e-6


# --- loading and the reference output ----------------------------------------------------------------------------

def test_reproduces_the_reference_encoder(tiny: dict, encoder: TextEncoder) -> None:
    with torch.no_grad():
        out = encoder(tiny["ids"], tiny["mask"])
    assert out.shape == tiny["output"].shape
    torch.testing.assert_close(out, tiny["output"], atol=ATOL, rtol=RTOL)


def test_from_native_assigns_without_copying(tiny: dict, encoder: TextEncoder) -> None:
    model = encoder.model
    assert model.shared.weight.data_ptr() == tiny["weights"]["token_embedding.weight"].data_ptr()
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert not any(p.is_meta for p in encoder.parameters())
    assert len(list(encoder.parameters())) == len(tiny["weights"])


def test_from_native_converts_dtype(tiny: dict) -> None:
    enc = TextEncoder.from_native(tiny["weights"], tiny["config"], dtype=torch.bfloat16)
    assert {p.dtype for p in enc.parameters()} == {torch.bfloat16}
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight


@pytest.mark.parametrize("case", ["missing", "unexpected", "truncated", "shape"])
def test_a_wrong_state_dict_names_the_keys(tiny: dict, case: str) -> None:
    weights, config = dict(tiny["weights"]), tiny["config"]
    if case == "missing":
        del weights["blocks.1.attn.q.weight"]
        expected = "missing 1 key(s): 'blocks.1.attn.q.weight'"
    elif case == "unexpected":
        weights["blocks.0.ffn.gate.1.weight"] = torch.zeros(1)
        expected = "unexpected key(s): 'blocks.0.ffn.gate.1.weight'"
    elif case == "truncated":
        weights = {k: v for k, v in weights.items() if not k.startswith("blocks.1.")}
        expected = "missing 10 key(s): 'blocks.1.attn.k.weight', 'blocks.1.attn.o.weight', "
    else:
        weights["blocks.0.attn.q.weight"] = torch.zeros(8, 32)
        expected = "'blocks.0.attn.q.weight' has shape (8, 32), the config needs (32, 32)"
    with pytest.raises(CheckpointError, match="text encoder") as info:
        TextEncoder.from_native(weights, config)
    assert expected in str(info.value)


def test_a_deeper_config_than_the_checkpoint_is_an_error(tiny: dict) -> None:
    config = dataclasses.replace(tiny["config"], num_layers=3)
    with pytest.raises(CheckpointError, match="'blocks.2.attn.k.weight'"):
        TextEncoder.from_native(tiny["weights"], config)


def test_round_trip_through_a_transformers_folder(tiny: dict, encoder: TextEncoder, tmp_path: Path) -> None:
    encoder.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    loaded = TextEncoder.from_pretrained_folder(tmp_path)
    assert loaded.config == tiny["config"]
    assert loaded.model.encoder.embed_tokens.weight is loaded.model.shared.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(tiny["ids"], tiny["mask"]), encoder(tiny["ids"], tiny["mask"]),
                                   atol=0, rtol=0)


def test_a_folder_without_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        TextEncoder.from_pretrained_folder(tmp_path)


def test_a_folder_of_another_model_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "feed_forward_proj": "relu"}))
    with pytest.raises(CheckpointError, match="gated-gelu UMT5"):
        TextEncoder.from_pretrained_folder(tmp_path)


# --- tokenizer and prompts ---------------------------------------------------------------------------------------

def test_load_tokenizer_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


@pytest.mark.parametrize("raw, clean", [
    ("  a   cat\n\tdog  ", "a cat dog"),
    ("a cat &amp; dog", "a cat & dog"),
    ("a cat &amp;amp; dog", "a cat & dog"),
    ("a&nbsp;cat", "a cat"),
])
def test_clean_prompt(raw: str, clean: str) -> None:
    assert clean_prompt(raw) == clean


def test_prompts_are_zeroed_past_their_length(encoder: TextEncoder, tokenizer) -> None:
    prompts = ["a cat", "the dog runs on the beach at sunset"]
    context = encode_prompts(encoder, tokenizer, prompts, text_len=16)
    assert context.shape == (2, 16, encoder.config.dim)
    tokens = tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    lengths = tokens["attention_mask"].sum(dim=1).tolist()
    assert lengths == [3, 9]  # words plus </s>
    with torch.no_grad():
        hidden = encoder(tokens["input_ids"], tokens["attention_mask"])
    for b, n in enumerate(lengths):
        torch.testing.assert_close(context[b, :n], hidden[b, :n], atol=0, rtol=0)
        assert torch.count_nonzero(context[b, n:]) == 0
        assert torch.count_nonzero(hidden[b, n:]) > 0  # the encoder itself does not zero them


def test_prompts_are_cleaned_before_tokenising(encoder: TextEncoder, tokenizer) -> None:
    messy = encode_prompts(encoder, tokenizer, ["  a   cat &amp; \n dog "], text_len=8)
    tidy = encode_prompts(encoder, tokenizer, ["a cat & dog"], text_len=8)
    torch.testing.assert_close(messy, tidy, atol=0, rtol=0)


def test_long_prompts_are_truncated(encoder: TextEncoder, tokenizer) -> None:
    context = encode_prompts(encoder, tokenizer, [" ".join(WORDS * 3)], text_len=6)
    assert context.shape == (1, 6, encoder.config.dim)
    assert torch.count_nonzero(context.abs().sum(dim=-1)) == 6


def test_text_len_defaults_to_the_config(encoder: TextEncoder, tokenizer) -> None:
    assert encode_prompts(encoder, tokenizer, ["a cat"]).shape == (1, encoder.config.text_len, encoder.config.dim)


@pytest.mark.parametrize("prompt", ["", "   \n\t", "&nbsp;"])
def test_an_empty_prompt_is_a_clear_error(encoder: TextEncoder, tokenizer, prompt: str) -> None:
    with pytest.raises(ConfigError, match="prompt 1 is empty") as info:
        encode_prompts(encoder, tokenizer, ["a cat", prompt], text_len=8)
    assert isinstance(info.value, TempoError)


def test_unknown_words_are_found_for_small_vocabularies():
    from tempo_cli.tokenizers import build_byte_tokenizer, build_toy_word_tokenizer, unknown_words

    toy = build_toy_word_tokenizer()
    assert unknown_words(toy, "a dog in snow, a Red ball in snow") == ["dog", "in", "snow"]
    assert unknown_words(toy, "a red ball moving left on a black background") == []
    assert unknown_words(build_byte_tokenizer(), "a dog in snow") == []  # bytes cover any text
