"""Video and image files: exact frame counts, round trips within codec tolerance, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tempo_cli.errors import ConfigError, TempoError, UsageError
from tempo_cli.video import (
    contact_sheet,
    count_frames,
    from_uint8_frames,
    is_video,
    read_image,
    read_metadata,
    read_video,
    resize_frames,
    sample_video,
    to_uint8_frames,
    write_video,
)

HEIGHT, WIDTH, FPS = 48, 64, 24


def smooth_frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 [T, H, W, 3]: gradients that drift a little every frame, so every frame differs and codecs do well."""
    t = np.arange(count, dtype=np.float32)[:, None, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :]
    red = 40 + 160 * x + 2 * t
    green = 40 + 160 * y
    blue = 128 + 60 * np.sin(2 * np.pi * (x + y) + 0.1 * t)
    channels = np.broadcast_arrays(red, green, blue)  # each [T, H, W]
    return np.clip(np.stack(channels, axis=-1), 0, 255).round().astype(np.uint8)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("count", [1, 2, 17, 65, 97])
def test_mp4_keeps_every_frame(tmp_path, count):
    path = write_video(smooth_frames(count), tmp_path / "clip.mp4", FPS)
    assert count_frames(path) == count


def test_mp4_round_trip_within_codec_tolerance(tmp_path):
    frames = smooth_frames(65)
    path = write_video(frames, tmp_path / "clip.mp4", FPS, quality=10)
    back, fps = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert fps == pytest.approx(FPS)
    assert np.abs(back.astype(np.float32) - frames).mean() < 3.0


def test_ntsc_rate_is_kept(tmp_path):
    path = write_video(smooth_frames(5), tmp_path / "clip.mp4", 24000 / 1001)
    assert read_video(path)[1] == pytest.approx(24000 / 1001, abs=0.01)


def test_webm(tmp_path):
    frames = smooth_frames(9)
    back, _ = read_video(write_video(frames, tmp_path / "clip.webm", FPS))
    assert back.shape == frames.shape and np.abs(back.astype(np.float32) - frames).mean() < 4.0


@pytest.mark.parametrize("count", [1, 17])
def test_gif_keeps_every_frame_even_repeated_ones(tmp_path, count):
    frames = np.repeat(smooth_frames((count + 1) // 2), 2, axis=0)[:count]  # neighbours identical: PIL would merge
    path = write_video(frames, tmp_path / "clip.gif", FPS)
    assert count_frames(path) == count
    with Image.open(path) as image:
        assert image.n_frames == count
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(FPS, rel=0.1)
    assert np.abs(back.astype(np.float32) - frames).mean() < 8.0  # a 256-colour palette


def test_gif_allows_odd_sizes_mp4_does_not(tmp_path):
    frames = smooth_frames(3, height=33, width=47)
    assert count_frames(write_video(frames, tmp_path / "odd.gif", FPS)) == 3
    with pytest.raises(UsageError, match="even width and height, got 47x33"):
        write_video(frames, tmp_path / "odd.mp4", FPS)


def test_tensor_input_is_written(tmp_path):
    video = from_uint8_frames(smooth_frames(4))
    path = write_video(video, tmp_path / "clip.mp4", FPS)
    assert count_frames(path) == 4


def test_last_seconds_and_max_frames(tmp_path):
    frames = smooth_frames(65)
    path = write_video(frames, tmp_path / "clip.mp4", FPS, quality=10)
    tail, _ = read_video(path, last_seconds=1.0)
    assert len(tail) == 24
    assert np.abs(tail.astype(np.float32) - frames[-24:]).mean() < 3.0
    head, _ = read_video(path, max_frames=10)
    assert len(head) == 10 and np.abs(head.astype(np.float32) - frames[:10]).mean() < 3.0
    assert len(read_video(path, max_frames=30, last_seconds=0.5)[0]) == 12
    assert len(read_video(path, last_seconds=100)[0]) == 65


def test_writes_are_atomic_and_never_overwrite_without_force(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(smooth_frames(3), path, FPS)
    assert leftovers(tmp_path) == []
    with pytest.raises(UsageError) as caught:
        write_video(smooth_frames(5), path, FPS)
    assert caught.value.hint == "pass --force to overwrite it"
    assert count_frames(path) == 3
    write_video(smooth_frames(5), path, FPS, force=True)
    assert count_frames(path) == 5
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import tempo_cli.video as video

    monkeypatch.setattr(video, "count_frames", lambda path: 1)  # as if the encoder had dropped frames
    with pytest.raises(TempoError, match="wrote 1 frames"):
        write_video(smooth_frames(3), tmp_path / "clip.mp4", FPS)
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import tempo_cli.video as video

    monkeypatch.setitem(video._CODECS, ".mp4", ("no-such-encoder", []))
    with pytest.raises(TempoError) as caught:
        write_video(smooth_frames(3), tmp_path / "clip.mp4", FPS)
    message = str(caught.value)
    assert message.startswith(f"cannot write video {tmp_path / 'clip.mp4'}: ") and "\n" not in message
    assert "no-such-encoder" in message or "ncoder" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rate, target", [(30, 24), (24, 6), (12, 24), (24, 24)])
def test_sample_video_picks_the_nearest_frames_as_the_dataset_loader_does(tmp_path, rate, target):
    from tempo_cli.datasets import resample_indices

    path = write_video(smooth_frames(21), tmp_path / "clip.mp4", rate, quality=10)
    frames, _ = read_video(path)
    expected = resize_frames(frames[resample_indices(len(frames), rate, target)], 32, 40)
    sampled, source_rate = sample_video(path, target, (32, 40))
    assert source_rate == rate and sampled.shape[1:] == (32, 40, 3)
    assert len(expected) - 1 <= len(sampled) <= len(expected)  # a last target past the final frame is dropped
    assert np.array_equal(sampled, expected[:len(sampled)])
    assert np.array_equal(sample_video(path, target, (32, 40), max_frames=3)[0], sampled[:3])


def test_bad_options_are_usage_errors(tmp_path):
    frames = smooth_frames(2)
    with pytest.raises(UsageError, match="unknown suffix '.avi'") as caught:
        write_video(frames, tmp_path / "clip.avi", FPS)
    assert ".mp4" in caught.value.hint and ".gif" in caught.value.hint
    with pytest.raises(UsageError, match="--quality"):
        write_video(frames, tmp_path / "clip.mp4", FPS, quality=60)
    with pytest.raises(UsageError, match="--fps"):
        write_video(frames, tmp_path / "clip.mp4", 0)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_video_and_image(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(ConfigError, match=r"cannot read video .*junk\.mp4: Invalid data"):
        read_video(junk)
    with pytest.raises(ConfigError, match="cannot read video"):
        count_frames(junk)
    with pytest.raises(ConfigError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(ConfigError, match=r"cannot read image .*fake\.png"):
        read_image(fake)
    with pytest.raises(ConfigError, match="no such file"):
        read_image(tmp_path / "missing.png")
    assert "\n" not in str(pytest.raises(ConfigError, read_video, junk).value)


def test_read_image_covers_and_center_crops(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)  # a wide image: black sides, white in the middle
    pixels[:, 12:68] = 255
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "wide.png")
    assert read_image(tmp_path / "wide.png").shape == (40, 80, 3)
    square = read_image(tmp_path / "wide.png", size=(20, 20))  # scaled to 20x40, then the middle 20x20 kept
    assert square.shape == (20, 20, 3) and square.min() >= 250
    tall = read_image(tmp_path / "wide.png", size=(80, 40))
    assert tall.shape == (80, 40, 3)


def test_resize_frames(tmp_path):
    frames = smooth_frames(3)
    assert resize_frames(frames, HEIGHT, WIDTH) is frames
    assert resize_frames(frames, 32, 32).shape == (3, 32, 32, 3)


def test_contact_sheet(tmp_path):
    sheet = contact_sheet(smooth_frames(10), tmp_path / "sheet.png")  # 4 columns, 3 rows, 2-pixel gaps
    with Image.open(sheet) as image:
        assert image.size == (4 * (WIDTH + 2) + 2, 3 * (HEIGHT + 2) + 2)
    many = contact_sheet(smooth_frames(100), tmp_path / "many.png", max_frames=8, columns=8, cell_width=32)
    with Image.open(many) as image:
        assert image.size == (8 * 34 + 2, 1 * 26 + 2)
    with pytest.raises(UsageError, match="already exists"):
        contact_sheet(smooth_frames(2), sheet)
    assert leftovers(tmp_path) == []


# every character ffmpeg's metadata format escapes, a line break, quotes and text outside ASCII
AWKWARD = 'a = b; c # d \\ e\nnext "line" \u00e9t\u00e9 \u2192 \u96ea'


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".png"])
def test_metadata_is_kept_and_read_back(tmp_path, suffix):
    """What a file is written with comes back exactly, whatever its characters; videos still keep every frame."""
    metadata = {"title": AWKWARD, "comment": '{"prompt": "' + AWKWARD.replace("\n", "\\n") + '"}'}
    path = tmp_path / f"tagged{suffix}"
    if suffix == ".png":
        contact_sheet(smooth_frames(3), path, metadata=metadata)
    else:
        write_video(smooth_frames(5), path, FPS, metadata=metadata)
        assert count_frames(path) == 5
    read = read_metadata(path)
    assert {key: read.get(key) for key in metadata} == metadata
    assert "comment" not in read_metadata(_untagged(tmp_path, suffix))


def _untagged(folder, suffix):
    path = folder / f"plain{suffix}"
    if suffix == ".png":
        return contact_sheet(smooth_frames(3), path)
    return write_video(smooth_frames(5), path, FPS)


def test_a_gif_has_no_room_for_metadata(tmp_path):
    path = write_video(smooth_frames(3), tmp_path / "a.gif", FPS, metadata={"comment": "x"})
    assert count_frames(path) == 3 and "comment" not in read_metadata(path)
    with pytest.raises(UsageError, match="does not exist"):
        read_metadata(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ConfigError, match="cannot read video"):
        read_metadata(tmp_path / "bad.mp4")


def test_uint8_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    video = from_uint8_frames(frames)
    assert video.shape == (3, 3, 5, 7) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert np.array_equal(to_uint8_frames(video), frames)
    assert np.array_equal(to_uint8_frames(torch.full((3, 1, 2, 2), 5.0))[0, 0, 0], [255, 255, 255])  # clamped
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        to_uint8_frames(torch.zeros(2, 3, 4, 4))


def test_is_video():
    assert is_video("a.MP4") and is_video("a.gif") and not is_video("a.png") and not is_video("a.tempo")
