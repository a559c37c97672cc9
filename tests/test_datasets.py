"""Training sources (the toy world, folders of captioned videos, ``--data`` dispatch) and the toy word tokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tempo_cli.config import VideoConfig
from tempo_cli.datasets import FolderSource, ToyWorldSource, open_source, resample_indices
from tempo_cli.errors import ConfigError
from tempo_cli.presets import load_preset
from tempo_cli.tokenizers import (
    BUILTIN_TOKENIZERS,
    build_toy_word_tokenizer,
    build_word_tokenizer,
    load_any_tokenizer,
    toy_words,
)
from tempo_cli.toyworld import parse_caption, render, sample_scene
from tempo_cli.video import write_video

STEP = 20  # grey level per frame index in the test videos: frame k is grey 20 + STEP * k


def numbered(count: int, height: int = 32, width: int = 32) -> np.ndarray:
    """uint8 [T, H, W, 3], frame k a flat grey that says k even after lossy coding."""
    levels = (20 + STEP * np.arange(count)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 20) / STEP) for f in frames]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """b.mp4 (9 frames, caption in b.txt), a.mp4 (4 frames, caption in captions.jsonl) and c.gif (jsonl and .txt)."""
    write_video(numbered(9), tmp_path / "b.mp4", 24)
    (tmp_path / "b.txt").write_text("  the long\nvideo \n")
    write_video(numbered(4), tmp_path / "a.mp4", 24)
    write_video(numbered(9), tmp_path / "c.gif", 24)
    (tmp_path / "c.txt").write_text("from the txt")
    lines = [{"file": "a.mp4", "caption": "the short video"}, {"file": "c.gif", "caption": "from the jsonl"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    (tmp_path / "notes.md").write_text("not a video")
    return tmp_path


def preset_with(height: int, width: int, fps: int = 24):
    preset = load_preset("toy-init")
    return dataclasses.replace(preset, video=VideoConfig(height, width, fps))


# --- the toy world -----------------------------------------------------------------------------------------------

def test_toyworld_clips_are_deterministic_and_match_their_scene() -> None:
    source = ToyWorldSource(seed=3, size=32)
    frames, caption = source.clip(7, 9)
    assert frames.dtype == np.uint8 and frames.shape == (9, 32, 32, 3)
    again, same = ToyWorldSource(seed=3, size=32).clip(7, 9)
    assert np.array_equal(frames, again) and caption == same
    parse_caption(caption)  # the toy world's template
    other_index, other_seed = source.clip(8, 9), ToyWorldSource(seed=4, size=32).clip(7, 9)
    assert not np.array_equal(frames, other_index[0]) and not np.array_equal(frames, other_seed[0])


def test_toyworld_swapped_clip_is_the_same_scene_with_other_shapes() -> None:
    from tempo_cli.datasets import _stable_int
    from tempo_cli.toyworld import SHAPES

    source = ToyWorldSource(seed=2, size=32)
    for index in range(6):
        frames, caption = source.clip(index, 9)
        swapped = source.swapped_clip(index, 9)
        assert swapped.shape == frames.shape and np.array_equal(swapped, source.swapped_clip(index, 9))
        scene = sample_scene(_stable_int(2, index))
        shapes = [SHAPES[(SHAPES.index(o.shape) + 1) % 3] for o in scene.objects]
        try:  # the next shape of each object, where it stays in the frame
            expected = dataclasses.replace(scene, objects=tuple(
                dataclasses.replace(o, shape=s) for o, s in zip(scene.objects, shapes)))
        except ConfigError:
            continue
        assert np.array_equal(swapped, render(expected, 9, size=32)) and not np.array_equal(swapped, frames)
        # the same colours in the same places: only the outlines differ
        assert (swapped != frames).any(axis=-1).mean() < 0.1


def test_toyworld_clip_is_its_scene_rendered_from_frame_zero() -> None:
    from tempo_cli.datasets import _stable_int

    frames, caption = ToyWorldSource(seed=1).clip(5, 6)
    scene = sample_scene(_stable_int(1, 5))
    assert caption == scene.caption
    assert np.array_equal(frames, render(scene, 6, 24, 64, start_frame=0))


def test_toyworld_draws_scenes_with_its_weights() -> None:
    from tempo_cli.datasets import _stable_int

    weights = {"triangle": 4.0, "dark green": 0.0}
    source = ToyWorldSource(seed=2, weights=weights)
    for index in range(6):
        assert source.clip(index, 5)[1] == sample_scene(_stable_int(2, index), weights=weights).caption
    with pytest.raises(ConfigError, match="no shape, motion or background 'pink'"):
        ToyWorldSource(weights={"pink": 1})


def test_toyworld_rejects_bad_requests() -> None:
    with pytest.raises(ConfigError, match="index"):
        ToyWorldSource().clip(-1, 5)
    with pytest.raises(ConfigError, match="frames"):
        ToyWorldSource().clip(0, 0)
    with pytest.raises(ConfigError, match="seed"):
        ToyWorldSource(seed=-1)


# --- folders of captioned videos ------------------------------------------------------------------------------

def test_folder_lists_videos_by_name_with_their_captions(folder: Path) -> None:
    source = FolderSource(folder, 32, 32)
    assert [p.name for p in source.videos] == ["a.mp4", "b.mp4", "c.gif"]
    assert source.captions == ["the short video", "the long video", "from the txt"]  # .txt wins over jsonl
    assert [source.clip(i, 3)[1] for i in range(4)] == [*source.captions, "the short video"]


def test_folder_windows_are_exact_stable_and_inside_the_video(folder: Path) -> None:
    source = FolderSource(folder, 32, 32)
    offsets = set()
    for index in range(1, 60, 3):  # all of b.mp4 (9 frames)
        frames, _ = source.clip(index, 5)
        assert frames.dtype == np.uint8 and frames.shape == (5, 32, 32, 3)
        numbers = frame_numbers(frames)
        assert numbers == list(range(numbers[0], numbers[0] + 5)) and 0 <= numbers[0] <= 4
        assert np.array_equal(frames, FolderSource(folder, 32, 32).clip(index, 5)[0])
        offsets.add(numbers[0])
    assert len(offsets) > 2  # the offset varies with the index
    assert frame_numbers(source.clip(1, 9)[0]) == list(range(9))


def test_folder_short_video_holds_its_last_frame(folder: Path) -> None:
    frames, caption = FolderSource(folder, 32, 32).clip(0, 7)  # a.mp4 has 4 frames
    assert caption == "the short video" and frames.shape == (7, 32, 32, 3)
    assert frame_numbers(frames) == [0, 1, 2, 3, 3, 3, 3]


def test_folder_resizes_to_cover_and_crops_the_centre(tmp_path: Path) -> None:
    video = np.zeros((3, 32, 64, 3), np.uint8)  # [T, H, W, 3]: red, green (middle half), blue columns
    video[:, :, :16, 0] = video[:, :, 16:48, 1] = video[:, :, 48:, 2] = 255
    write_video(video, tmp_path / "v.mp4", 24)
    (tmp_path / "v.txt").write_text("green")
    frames, _ = FolderSource(tmp_path, 16, 16).clip(0, 3)
    assert frames.shape == (3, 16, 16, 3)
    assert np.abs(frames.astype(int) - [0, 255, 0]).max() < 40  # only the green middle is left
    assert FolderSource(tmp_path, 8, 24).clip(0, 2)[0].shape == (2, 8, 24, 3)


def test_folder_resamples_other_frame_rates_by_nearest_frame(tmp_path: Path) -> None:
    write_video(numbered(4), tmp_path / "slow.mp4", 12)
    write_video(numbered(10), tmp_path / "fast.mp4", 48)
    for name in ("slow", "fast"):
        (tmp_path / f"{name}.txt").write_text(name)
    source = FolderSource(tmp_path, 32, 32)  # fast.mp4 first
    assert frame_numbers(source.clip(0, 5)[0]) == [0, 2, 4, 6, 8]
    assert frame_numbers(source.clip(1, 8)[0]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(resample_indices(10, 30, 24)) == [0, 1, 2, 4, 5, 6, 7, 9]
    assert list(resample_indices(5, 24, 24)) == [0, 1, 2, 3, 4]


def test_folder_keeps_a_bounded_cache(folder: Path) -> None:
    source = FolderSource(folder, 32, 32, cache_videos=2)
    for index in range(3):
        source.clip(index, 2)
    assert [p.name for p in source._cache] == ["b.mp4", "c.gif"]
    source.clip(1, 2)  # b.mp4 is now the most recent
    source.clip(0, 2)
    assert [p.name for p in source._cache] == ["b.mp4", "a.mp4"]


def test_folder_errors_name_the_file_and_the_fix(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    (folder / "d.mp4").write_bytes((folder / "a.mp4").read_bytes())
    with pytest.raises(ConfigError, match=r"d\.mp4 has no caption") as caught:
        FolderSource(folder, 32, 32)
    assert "d.txt" in caught.value.hint and "captions.jsonl" in caught.value.hint
    (folder / "d.txt").write_text(" \n")
    with pytest.raises(ConfigError, match=r"d\.txt is empty"):
        FolderSource(folder, 32, 32)
    (folder / "d.txt").write_text("fine")
    (folder / "captions.jsonl").write_text('{"file": "a.mp4"}\n')
    with pytest.raises(ConfigError, match="line 1"):
        FolderSource(folder, 32, 32)
    empty = tmp_path_factory.mktemp("empty")
    (empty / "readme.txt").write_text("no videos here")
    with pytest.raises(ConfigError, match="no videos"):
        FolderSource(empty, 32, 32)
    with pytest.raises(ConfigError, match="no such folder"):
        FolderSource(empty / "missing", 32, 32)


# --- --data -------------------------------------------------------------------------------------------------------

def test_open_source_dispatches_on_the_spec(folder: Path) -> None:
    preset = load_preset("toy-init")
    toy = open_source("toyworld", preset)
    assert isinstance(toy, ToyWorldSource) and (toy.seed, toy.size) == (0, 64)
    assert open_source("toyworld:5", preset).seed == 5
    videos = open_source(str(folder), preset_with(16, 32, 24))
    assert isinstance(videos, FolderSource) and (videos.height, videos.width, videos.fps) == (16, 32, 24)
    weighed = dataclasses.replace(preset, train=dataclasses.replace(preset.train, world_weights={"circling": 2.0}))
    source = open_source("toyworld", weighed)
    assert source.weights == {"circling": 2.0} and "circling" in source.identity  # a new identity: a new cache
    assert source.identity != toy.identity and toy.weights is None
    with pytest.raises(ConfigError, match="seed"):
        open_source("toyworld:x", preset)
    with pytest.raises(ConfigError, match="square"):
        open_source("toyworld", preset_with(16, 32))
    with pytest.raises(ConfigError, match="no such folder"):
        open_source(str(folder / "missing"), preset)


# --- the toy word tokenizer -----------------------------------------------------------------------------------

def test_toy_tokenizer_knows_every_toy_caption_word() -> None:
    tokenizer = load_any_tokenizer("builtin:toy-words")
    assert "builtin:toy-words" in BUILTIN_TOKENIZERS
    vocab = len(tokenizer)
    assert vocab == 3 + len(toy_words()) < 64
    assert tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    for seed in range(200):
        caption = sample_scene(seed, max_objects=3).caption
        ids = tokenizer(caption)["input_ids"]
        assert tokenizer.unk_token_id not in ids and max(ids) < vocab
        assert ids[-1] == tokenizer.eos_token_id and len(ids) == len(caption.split()) + 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption


def test_word_tokenizer_lowercases_splits_punctuation_pads_and_truncates() -> None:
    tokenizer = build_word_tokenizer(["Red", "ball", "red"], model_max_length=8)
    assert len(tokenizer) == 5
    batch = tokenizer(["A RED ball, red", "ball"], padding="max_length", truncation=True, max_length=8)
    assert batch["input_ids"] == [[2, 3, 4, 2, 3, 1, 0, 0], [4, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"] == [[1] * 6 + [0] * 2, [1] * 2 + [0] * 6]
    long = tokenizer("red " * 20, truncation=True, max_length=8)["input_ids"]
    assert long == [3] * 7 + [1]
    with pytest.raises(ConfigError, match="dark blue"):
        build_word_tokenizer(["dark blue"])
    with pytest.raises(ConfigError, match="one token"):
        build_word_tokenizer(["</s>"])


def test_toy_tokenizer_reloads_after_save_pretrained(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    build_toy_word_tokenizer().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = ["a red ball moving left on a gray background", "A Cyan Triangle circling, on a pink background."]
    expected = build_toy_word_tokenizer()(texts, padding="max_length", max_length=24)
    assert reloaded(texts, padding="max_length", max_length=24)["input_ids"] == expected["input_ids"]
    assert load_any_tokenizer(tmp_path)(texts[0])["input_ids"] == expected["input_ids"][0][:10]
    assert 2 in expected["input_ids"][1]  # "pink", "," and "." are unknown
