"""Presets: the shipped YAMLs, extends, --set overrides, error messages, weight lookup, the byte tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tempo_cli.config import TEMPOMASTER_14B_DIT, UMT5_XXL, WAN21_VAE, rope_split
from tempo_cli.errors import CheckpointError, ConfigError, UsageError
from tempo_cli.presets import (
    apply_overrides, cache_dir, find_weights, list_presets, load_preset, preset_dirs, preset_from_dict,
    preset_notice, resolved_dict,
)
from tempo_cli.tokenizers import BYTE_VOCAB_SIZE, build_byte_tokenizer, load_any_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RELEASE_FILES = ("wan_video_dit_bf16.bin", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No preset folders, weights or cache of the machine running the tests leak in."""
    for name in ("TEMPO_PRESETS", "TEMPO_WEIGHTS", "TEMPO_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the shipped presets --------------------------------------------------------------------------------------

def test_checkout_presets_are_found() -> None:
    assert ROOT / "presets" in preset_dirs()
    assert {"tempomaster-14b", "tiny-random"} <= set(list_presets())


def test_every_preset_loads_and_round_trips() -> None:
    for name in list_presets():
        preset = load_preset(name)
        assert preset.name == name and preset.description
        data = json.loads(json.dumps(resolved_dict(preset)))
        assert preset_from_dict(data) == preset


def test_tempomaster_14b_is_the_release() -> None:
    preset = load_preset("tempomaster-14b")
    assert preset.dit == TEMPOMASTER_14B_DIT
    assert preset.vae == WAN21_VAE
    assert preset.text_encoder == UMT5_XXL
    assert (preset.video.height, preset.video.width) == (480, 832)
    assert preset.video.frame_intervals == (4, 2, 1) and preset.video.chunks == (1, 2, 4)
    assert preset.video.level_fps() == (6, 12, 24)
    assert preset.sampler.steps == (50, 32, 32) and preset.sampler.shift == (5, 3, 3)
    assert (preset.sampler.guidance, preset.sampler.guidance_scale) == ("apg", 8)
    negative = preset.sampler.negative_prompt
    assert negative.startswith("jittery, shaky, fliker,") and negative.endswith("fused fingers, three legs")
    assert "\n" not in negative and "  " not in negative
    w = preset.weights
    assert (w.dit, w.vae, w.text_encoder, w.tokenizer) == (*RELEASE_FILES, "google/umt5-xxl")
    assert not w.is_random and preset_notice(preset) is None


def test_tiny_random_is_the_same_model_at_toy_widths() -> None:
    preset, release = load_preset("tiny-random"), load_preset("tempomaster-14b")
    assert preset.dit.patch_size == release.dit.patch_size and preset.dit.in_dim == release.dit.in_dim
    assert rope_split(preset.dit.head_dim) == (16, 16, 16)
    assert preset.vae.temporal_factor == release.vae.temporal_factor
    assert preset.vae.spatial_factor == release.vae.spatial_factor
    assert preset.video.frame_intervals == release.video.frame_intervals and preset.video.chunks == release.video.chunks
    assert preset.dit.num_parameters() < 200_000
    assert preset.weights.is_random and preset.weights.random_seed == 0
    assert preset.weights.tokenizer == "builtin:bytes"
    assert preset.text_encoder.vocab >= BYTE_VOCAB_SIZE
    notice = preset_notice(preset)
    assert notice is not None and "random weights" in notice and "tiny-random" in notice
    assert find_weights(preset) == {}


# --- extends and overrides -------------------------------------------------------------------------------------

def test_extends_merges_section_by_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "small.yaml", "extends: tiny-random\nvideo:\n  height: 32\nsampler:\n  steps: [1, 1, 1]\n")
    write(tmp_path / "smaller.yaml", "extends: small\ndescription: two levels of extends\nvideo:\n  width: 48\n")
    monkeypatch.setenv("TEMPO_PRESETS", str(tmp_path))
    base, preset = load_preset("tiny-random"), load_preset("smaller")
    assert preset.name == "smaller" and preset.description == "two levels of extends"
    assert (preset.video.height, preset.video.width, preset.video.fps) == (32, 48, base.video.fps)
    assert preset.sampler.steps == (1, 1, 1) and preset.sampler.shift == base.sampler.shift
    assert preset.dit == base.dit and preset.weights == base.weights
    assert load_preset(str(tmp_path / "small.yaml")).video.height == 32  # by path, parent found by name


def test_a_preset_folder_can_shadow_a_shipped_preset_by_extending_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "tiny-random.yaml", "extends: tiny-random\nsampler:\n  steps: [1, 1, 1]\n")
    monkeypatch.setenv("TEMPO_PRESETS", str(tmp_path))
    assert load_preset("tiny-random").sampler.steps == (1, 1, 1)


def test_weights_are_found_beside_the_preset_that_names_them(tmp_path: Path) -> None:
    """A preset extending the shipped toy model elsewhere uses its weights; one naming its own looks beside itself."""
    tuned = load_preset(str(write(tmp_path / "tuned.yaml", "extends: toy\nsampler:\n  guidance_scale: 2.0\n")))
    assert find_weights(tuned) == find_weights(load_preset("toy"))
    assert find_weights(tuned)["dit"].parent == ROOT / "presets" / "toy"
    own = write(tmp_path / "own.yaml", "extends: toy\nweights: {dit: d.st, vae: v.st, text_encoder: t.st}\n")
    for name in ("d.st", "v.st", "t.st"):
        write(tmp_path / name, "")
    with pytest.raises(CheckpointError, match="classifier.safetensors"):  # toy's classifier is named there too
        find_weights(load_preset(str(own)))
    write(tmp_path / "toy" / "classifier.safetensors", "")
    assert find_weights(load_preset(str(own)))["dit"] == tmp_path / "d.st"


def test_tempo_presets_folders_are_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write(first / "mine.yml", "extends: tiny-random\n")
    write(second / "theirs.yaml", "extends: tiny-random\n")
    monkeypatch.setenv("TEMPO_PRESETS", os.pathsep.join([str(first), str(second)]))
    assert preset_dirs()[:2] == [first, second]
    assert {"mine", "theirs", "tiny-random"} <= set(list_presets())
    assert load_preset("mine").dit == load_preset("tiny-random").dit


def test_overrides_parse_yaml_values() -> None:
    preset = load_preset("tiny-random", ["sampler.steps=[4,4,4]", "video.height=32", "dit.eps=1e-5",
                                         "sampler.negative_prompt=blurry, dark", "description=changed"])
    assert preset.sampler.steps == (4, 4, 4) and preset.video.height == 32
    assert preset.dit.eps == 1e-5 and preset.sampler.negative_prompt == "blurry, dark"
    assert preset.description == "changed"
    weighed = load_preset("toy-init", ["train.world_weights={triangle: 2, circling: 0.5}"])
    assert weighed.train.world_weights == {"triangle": 2.0, "circling": 0.5}
    assert load_preset("toy-init").train.world_weights == {}
    with pytest.raises(ConfigError, match=r"train\.world_weights: .* no shape, motion or background 'pink'"):
        load_preset("toy-init", ["train.world_weights={pink: 2}"])
    data = {"video": {"height": 64}}
    assert apply_overrides(data, ["video.height=16"]) == {"video": {"height": 16}}
    assert data == {"video": {"height": 64}}  # the input is not changed


def test_guidance_scale_is_one_number_or_one_per_level() -> None:
    from tempo_cli.pipeline import LevelSampling, guided_anywhere

    per_level = load_preset("tiny-random", ["sampler.guidance_scale=[1, 3.5, 2]"])
    assert per_level.sampler.guidance_scale == (1.0, 3.5, 2.0)
    levels = [LevelSampling.for_level(per_level, s) for s in per_level.video.frame_intervals]
    assert [(s.guidance_scale, s.guided) for s in levels] == [(1.0, False), (3.5, True), (2.0, True)]
    assert guided_anywhere(per_level)
    assert not guided_anywhere(load_preset("tiny-random", ["sampler.guidance_scale=[1, 1, 1]"]))
    one = load_preset("tiny-random", ["sampler.guidance_scale=3"])
    assert one.sampler.guidance_scale == 3.0 and {LevelSampling.for_level(one, s).guidance_scale
                                                  for s in one.video.frame_intervals} == {3.0}
    for bad in ("[4, 4]", "[4, 0.5, 4]", "0.5", ".inf"):
        with pytest.raises(ConfigError, match="sampler.guidance_scale"):
            load_preset("tiny-random", [f"sampler.guidance_scale={bad}"])


@pytest.mark.parametrize("negative", ['blurry: "x", #1', "two\nlines\ttab 'q' \\ é 🙂", "", "- [a]"])
def test_sampling_flags_become_overrides_that_keep_the_text(negative: str) -> None:
    from tempo_cli.options import sampler_overrides

    overrides = sampler_overrides(["sampler.guidance_scale=2"], 3.5, negative)
    preset = load_preset("tiny-random", overrides)
    assert (preset.sampler.guidance_scale, preset.sampler.negative_prompt) == (3.5, negative)  # the flags win
    assert sampler_overrides(None) == [] and sampler_overrides(["a.b=1"], None, None) == ["a.b=1"]
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="--guidance-scale must be at least 1"):
            sampler_overrides(None, bad)


@pytest.mark.parametrize("override, error, words", [
    ("dit.heads=3", ConfigError, ["'dit.heads'", "num_heads"]),
    ("model.dim=3", ConfigError, ["'model.dim'", "text_encoder"]),
    ("sampler.steps=abc", ConfigError, ["sampler.steps", "a list of int", "'abc'"]),
    ("video.height=true", ConfigError, ["video.height", "int"]),
    ("video.height=65", ConfigError, ["tiny-random.yaml", "video.height", "65"]),
    ("sampler.steps", UsageError, ["KEY=VALUE"]),
    ("=3", UsageError, ["KEY=VALUE"]),
    ("video.height=[1", UsageError, ["not valid YAML"]),
    ("train.world_weights=[2]", ConfigError, ["train.world_weights", "a mapping of str to float"]),
    ("sampler.world_weights={ball: 2}", ConfigError, ["'sampler.world_weights'"]),  # the train section's only
])
def test_bad_overrides_say_which(override: str, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        load_preset("tiny-random", [override])
    assert type(info.value) is error
    for word in words:
        assert word in str(info.value)


# --- errors in files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ("dit:\n  heads: 3\n", ["'dit.heads'", "num_heads"]),
    ("model:\n  dim: 3\n", ["'model'", "extends"]),
    ("name: other\n", ["'name'", "file's name"]),
    ("dit: 3\n", ["dit must be a mapping"]),
    ("video:\n  chunks: [1, 2]\n", ["video.chunks", "one positive count per level"]),
    ("sampler:\n  guidance_scale: high\n", ["sampler.guidance_scale", "float"]),
    ("video: [unclosed\n", ["cannot read"]),
])
def test_file_errors_name_the_file_and_the_key(tmp_path: Path, body: str, words: list[str]) -> None:
    path = write(tmp_path / "bad.yaml", "extends: tiny-random\n" + body)
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_an_error_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    parent = write(tmp_path / "parent.yaml", "extends: tiny-random\nvae:\n  z_channels: 4\n")
    child = write(tmp_path / "child.yaml", "extends: parent\n")
    with pytest.raises(ConfigError, match="vae.z_channels") as info:
        load_preset(str(child))
    assert str(parent) in info.value.message


def test_missing_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "partial.yaml", "dit:\n  dim: 48\n")
    with pytest.raises(ConfigError, match=r"dit is missing .*'dit.in_dim'"):
        load_preset(str(path))


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b\n")
    write(tmp_path / "b.yaml", "extends: a\n")
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        load_preset(str(tmp_path / "a.yaml"))


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("tempomaster-15b")
    assert "'tempomaster-15b'" in info.value.message
    assert "tempomaster-14b" in info.value.hint and "tiny-random" in info.value.hint
    with pytest.raises(ConfigError, match="not found"):
        load_preset("no/such/file.yaml")


def test_preset_from_dict_rejects_unknown_keys() -> None:
    data = resolved_dict(load_preset("tiny-random"))
    with pytest.raises(ConfigError, match="latent file: unknown key 'extra'"):
        preset_from_dict({**data, "extra": 1}, source="latent file")
    data["dit"]["heads"] = 1
    with pytest.raises(ConfigError, match="'dit.heads'"):
        preset_from_dict(data)


# --- weights ---------------------------------------------------------------------------------------------------

def make_weights(root: Path, dit_dir: str, encoder_dir: str) -> dict[str, Path]:
    files = {"dit": root / dit_dir / RELEASE_FILES[0], "vae": root / encoder_dir / RELEASE_FILES[1],
             "text_encoder": root / encoder_dir / RELEASE_FILES[2]}
    for path in files.values():
        write(path, "weights")
    files["tokenizer"] = root / encoder_dir / "google" / "umt5-xxl"
    write(files["tokenizer"] / "tokenizer.json", "{}")
    return files


@pytest.mark.parametrize("dit_dir, encoder_dir", [
    ("", ""),                                     # everything in one folder
    ("", "encoders"),                             # the release's checkpoints/ folder itself
    ("checkpoints", "checkpoints/encoders"),      # a clone of the release repository
])
def test_find_weights_in_flat_and_official_layouts(tmp_path: Path, dit_dir: str, encoder_dir: str) -> None:
    files = make_weights(tmp_path / "w", dit_dir, encoder_dir)
    assert find_weights(load_preset("tempomaster-14b"), tmp_path / "w") == files


def test_find_weights_looks_in_the_option_then_the_environment_then_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = load_preset("tempomaster-14b")
    cached = make_weights(tmp_path / "xdg-cache" / "tempo" / "tempomaster-14b", "", "")
    assert find_weights(preset) == cached
    from_env = make_weights(tmp_path / "env", "", "")
    monkeypatch.setenv("TEMPO_WEIGHTS", str(tmp_path / "env"))
    assert find_weights(preset) == from_env
    explicit = make_weights(tmp_path / "explicit", "", "")
    assert find_weights(preset, str(tmp_path / "explicit")) == explicit


def test_missing_weights_name_every_file_and_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPO_WEIGHTS", str(tmp_path / "env"))
    monkeypatch.setenv("TEMPO_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "explicit" / RELEASE_FILES[0], "weights")
    with pytest.raises(CheckpointError) as info:
        find_weights(load_preset("tempomaster-14b"), tmp_path / "explicit")
    message = info.value.message
    for name in (*RELEASE_FILES[1:], "google/umt5-xxl"):
        assert name in message
    assert RELEASE_FILES[0] not in message
    for place in ("explicit", "env", "cache/tempomaster-14b"):
        assert str(tmp_path / place) in message
    assert "checkpoints/encoders/" in message
    assert str(tmp_path / "cache" / "tempomaster-14b") in info.value.hint


def test_weights_folder_holds_the_files_under_their_own_names(tmp_path: Path) -> None:
    """The shipped toy preset names its files toy/dit.safetensors etc.; a tempo train --out folder holds
    dit.safetensors itself, and --weights on it must load those, not fall back to the shipped files."""
    shipped = find_weights(load_preset("toy"))
    for path in shipped.values():
        write(tmp_path / "run" / path.name, "weights")
    assert find_weights(load_preset("toy"), tmp_path / "run") == {
        key: tmp_path / "run" / path.name for key, path in shipped.items()}
    (tmp_path / "run" / "vae.safetensors").unlink()  # a partial folder: the rest from the preset's own
    assert find_weights(load_preset("toy"), tmp_path / "run")["vae"] == shipped["vae"]


def test_a_weights_folder_with_none_of_the_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds none of the weight files of preset 'toy'") as info:
        find_weights(load_preset("toy"), tmp_path / "empty")
    assert "dit.safetensors" in info.value.message and "--weights" in info.value.hint


def test_cache_dir_honours_tempo_cache_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir("p") == tmp_path / "xdg-cache" / "tempo" / "p"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("p") == Path.home() / ".cache" / "tempo" / "p"
    monkeypatch.setenv("TEMPO_CACHE", str(tmp_path / "c"))
    assert cache_dir("p") == tmp_path / "c" / "p"


def test_random_preset_with_a_tokenizer_folder_needs_only_the_folder(tmp_path: Path) -> None:
    preset = load_preset("tiny-random", ["weights.tokenizer=tok"])
    with pytest.raises(CheckpointError, match="missing 1 weight file"):
        find_weights(preset, tmp_path)
    (tmp_path / "tok").mkdir()
    assert find_weights(preset, tmp_path) == {"tokenizer": tmp_path / "tok"}


# --- the byte tokenizer ----------------------------------------------------------------------------------------

def test_byte_tokenizer_encodes_bytes_appends_eos_and_pads() -> None:
    tokenizer = build_byte_tokenizer(model_max_length=16)
    assert len(tokenizer) == BYTE_VOCAB_SIZE
    batch = tokenizer(["hi é", "x"], padding="max_length", truncation=True, max_length=8)
    h, i, space, e1, e2 = (3 + b for b in "hi é".encode())
    assert batch["input_ids"] == [[h, i, space, e1, e2, 1, 0, 0], [3 + ord("x"), 1, 0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"] == [[1] * 6 + [0] * 2, [1] * 2 + [0] * 6]
    long = tokenizer("a" * 20, truncation=True, max_length=8)["input_ids"]
    assert len(long) == 8 and long[-1] == 1
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "hi é"


def test_byte_tokenizer_reloads_after_save_pretrained(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    build_byte_tokenizer().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = ["a prompt, 😀", "two"]
    expected = build_byte_tokenizer()(texts, padding="max_length", max_length=24)
    assert reloaded(texts, padding="max_length", max_length=24)["input_ids"] == expected["input_ids"]
    assert load_any_tokenizer(tmp_path)("two")["input_ids"] == expected["input_ids"][1][:4]


def test_load_any_tokenizer_builtin_and_unknown() -> None:
    assert load_any_tokenizer("builtin:bytes")("a")["input_ids"] == [3 + ord("a"), 1]
    with pytest.raises(ConfigError, match="builtin:bytes"):
        load_any_tokenizer("builtin:words")


# --- packaging -------------------------------------------------------------------------------------------------

def test_pyproject_lists_every_package_and_maps_the_presets() -> None:
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("tempo_cli", "stages") for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk <= set(setuptools["packages"]), "add the new package to [tool.setuptools] packages"
    assert setuptools["package-dir"]["tempo_cli.preset_files"] == "presets"
    assert "*.yaml" in setuptools["package-data"]["tempo_cli.preset_files"]


@pytest.mark.slow
def test_wheel_ships_the_presets_and_finds_them_installed(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(tmp_path / "wheels"), "--no-deps",
                    "--no-build-isolation", "-q"], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"tempo_cli/preset_files/{p.relative_to(ROOT / 'presets')}" for p in (ROOT / "presets").rglob("*")
               if p.suffix in (".yaml", ".safetensors")}
    assert shipped and shipped <= names and "tempo_cli/preset_files/toy/dit.safetensors" in names
    assert {f"{p.relative_to(ROOT)}" for p in (ROOT / "tempo_cli").rglob("*.py")} <= names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel), "-q"],
                   check=True, capture_output=True)
    script = ("import json, tempo_cli, tempo_cli.presets as p; "
              "print(json.dumps([tempo_cli.__file__, p.list_presets(), p.load_preset('tempomaster-14b').name, "
              "{k: str(v) for k, v in p.find_weights(p.load_preset('toy')).items()}]))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TEMPO_PRESETS", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout
    location, names_found, loaded, toy_weights = json.loads(out)
    assert Path(location).is_relative_to(site)
    assert {p.stem for p in (ROOT / "presets").glob("*.yaml")} <= set(names_found)
    assert loaded == "tempomaster-14b"
    assert sorted(toy_weights) == ["dit", "text_encoder", "vae"]  # the shipped toy weights, found installed
    assert all(Path(v).is_relative_to(site) for v in toy_weights.values())


def test_toy_init_is_announced_as_untrained_not_as_a_test_preset():
    preset = load_preset("toy-init")
    assert preset.train is not None and preset.weights.is_random
    notice = preset_notice(preset)
    assert "untrained" in notice and "tempo train" in notice and "tests" not in notice
