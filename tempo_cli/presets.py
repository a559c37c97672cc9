"""Presets: ``presets/<name>.yaml`` -> a frozen :class:`~tempo_cli.config.Preset`.

A preset file holds ``description``, optionally ``notice`` (a line said on stderr whenever the preset is used),
optionally ``extends`` (another preset's name, or a path relative to the file), and the sections ``dit``, ``vae``, ``text_encoder``, ``video``, ``sampler`` and ``weights``, whose keys
are exactly the fields of the matching config. ``extends`` merges section by section, the child's keys winning;
``--set section.key=value`` overrides (values parsed as YAML) apply last. The file's stem is the preset's name.

Presets are searched in the folders of ``$TEMPO_PRESETS`` (``os.pathsep``-separated), then a source checkout's
``presets/``, then the copy installed with the package (``tempo_cli/preset_files``, mapped from ``presets/`` in
pyproject.toml). The first file of a name wins.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from tempo_cli.config import (ClassifierConfig, DiTConfig, Preset, SamplerConfig, TextEncoderConfig, TrainConfig,
                              VAEConfig, VideoConfig, WeightsConfig, config_to_dict)
from tempo_cli.errors import CheckpointError, ConfigError, UsageError
from tempo_cli.tokenizers import BUILTIN_PREFIX

SECTIONS: dict[str, type] = {"dit": DiTConfig, "vae": VAEConfig, "text_encoder": TextEncoderConfig,
                             "video": VideoConfig, "sampler": SamplerConfig, "weights": WeightsConfig,
                             "train": TrainConfig, "classifier": ClassifierConfig}
# without train a preset cannot be trained; without classifier it has no classifier guidance
OPTIONAL_SECTIONS = ("train", "classifier")
FILE_KEYS = ("description", "notice", "extends", *SECTIONS)
SUFFIXES = (".yaml", ".yml")
WEIGHT_KEYS = ("dit", "vae", "text_encoder", "tokenizer", "classifier")  # a classifier only if named
# Where a weight file may sit under a weights folder: flat, or the release's layout (checkpoints/encoders/...).
WEIGHT_SUBDIRS = ("", "checkpoints", "encoders", "checkpoints/encoders")

_PACKAGE = Path(__file__).resolve().parent


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-6`` as text; this loader reads it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


@contextmanager
def _about(source: str) -> Iterator[None]:
    """Prefix the message of any ConfigError raised inside with ``source`` (a file, or ``--set``)."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from None


def preset_dirs() -> list[Path]:
    """The folders searched for presets, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get("TEMPO_PRESETS", "").split(os.pathsep) if p]
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "presets").is_dir():
        dirs.append(checkout / "presets")
    if (_PACKAGE / "preset_files").is_dir():
        dirs.append(_PACKAGE / "preset_files")
    return list(dict.fromkeys(dirs))


def list_presets() -> list[str]:
    """The names of every preset found, sorted."""
    return sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.iterdir()
                   if p.suffix in SUFFIXES and p.is_file()})


def _locate(name_or_path: str, near: Path | None = None) -> Path:
    """The file of a preset: a path (relative to ``near``'s folder if given), a sibling of ``near``, or a name."""
    if name_or_path.endswith(SUFFIXES) or "/" in name_or_path or os.sep in name_or_path:
        path = (near.parent if near else Path.cwd()) / Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"preset file not found: {path}")
        return path
    folders = ([near.parent] if near else []) + preset_dirs()
    for candidate in (folder / f"{name_or_path}{suffix}" for folder in folders for suffix in SUFFIXES):
        if candidate.is_file() and (near is None or candidate.resolve() != near.resolve()):
            return candidate  # a file never extends itself: it may extend the preset it shadows
    raise ConfigError(f"unknown preset {name_or_path!r}",
                      hint=f"available presets: {', '.join(list_presets()) or 'none'} (searched "
                           f"{', '.join(map(str, folders)) or 'nothing'}; add folders with TEMPO_PRESETS)")


def _describe(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if typing.get_origin(tp) is tuple:
        count = "" if Ellipsis in typing.get_args(tp) else f"{len(args)} "
        return f"a list of {count}{_describe(args[0])}"
    if typing.get_origin(tp) is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    if args:
        return " or ".join(_describe(a) for a in args)
    return "null" if tp is type(None) else tp.__name__


def _fits(value: Any, tp: Any) -> bool:
    """Whether plain YAML data fits a field's type: lists stand for tuples, ints for floats, bools are not ints."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        kinds = [args[0]] * len(value) if Ellipsis in args else list(args)
        return len(value) == len(kinds) and all(map(_fits, value, kinds))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is dict:
        return isinstance(value, Mapping) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if tp in (int, float):
        return isinstance(value, int if tp is int else (int, float)) and not isinstance(value, bool)
    return value is None if tp is type(None) else isinstance(value, tp)


def _check_section(section: str, data: Any) -> dict[str, Any]:
    """``data`` as a section's keys, each known and of the field's type; raises ConfigError naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(SECTIONS[section])
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"unknown key '{section}.{key}'", hint=f"allowed keys in {section}: {', '.join(hints)}")
        if not _fits(value, hints[key]):
            raise ConfigError(f"{section}.{key} must be {_describe(hints[key])}, got {value!r}")
    return dict(data)


def _read(path: Path) -> dict[str, Any]:
    """One preset file's data, every section and key checked; ``extends`` is not followed here."""
    with _about(str(path)):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the preset: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("a preset file must be a mapping of sections")
        for key, value in data.items():
            if key not in FILE_KEYS:
                raise ConfigError(f"unknown key {key!r}", hint=f"allowed top-level keys: {', '.join(FILE_KEYS)} "
                                                               "(the file's name is the preset's name)")
            if key in SECTIONS:
                data[key] = _check_section(key, value)
            elif not isinstance(value, str):
                raise ConfigError(f"{key} must be text, got {value!r}")
    return data


def _merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in child.items():
        merged[key] = {**merged.get(key, {}), **value} if key in SECTIONS else value
    return merged


def _resolve(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """A file's data with its ``extends`` chain merged in (parents first), and the folder of the nearest file in
    the chain (itself first) with a ``weights`` section: weight files are looked for beside the preset that names
    them, so one extending ``toy`` finds toy's."""
    if path.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: extends makes a cycle: {names}", hint="remove one of the extends")
    data = _read(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, path.resolve().parent
    with _about(str(path)):
        parent_path = _locate(parent, near=path)
    parent_data, folder = _resolve(parent_path, (*chain, path.resolve()))
    return _merge(parent_data, data), path.resolve().parent if "weights" in data else folder


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with ``section.key=value`` overrides applied; each value is parsed as YAML (``[4,4,4]``, ``64``)."""
    merged = _merge(data, {})
    for item in overrides:
        dotted, sep, text = item.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted:
            raise UsageError(f"--set {item!r} is not KEY=VALUE", hint="for example --set sampler.steps=[4,4,4]")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        with _about("--set"):
            if dotted in ("description", "notice"):
                merged[dotted] = str(value)
                continue
            section, _, key = dotted.partition(".")
            if section not in SECTIONS:
                raise ConfigError(f"unknown key {dotted!r}",
                                  hint=f"keys are description or SECTION.KEY with SECTION one of {', '.join(SECTIONS)}")
            merged.setdefault(section, {})[key] = _check_section(section, {key: value})[key]
    return merged


def _build(name: str, data: Mapping[str, Any], source: str, folder: Path | None = None) -> Preset:
    with _about(source):
        configs = {}
        for section, cls in SECTIONS.items():
            if section in OPTIONAL_SECTIONS and data.get(section) is None:
                continue
            values = _check_section(section, data.get(section, {}))
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            if missing:
                raise ConfigError(f"{section} is missing {', '.join(repr(f'{section}.{m}') for m in missing)}")
            configs[section] = cls(**values)
        return Preset(name=name, description=str(data.get("description", "")), notice=str(data.get("notice", "")),
                      folder=str(folder) if folder else "", **configs)


def preset_path(name_or_path: str) -> Path:
    """The YAML file a preset name (or path) resolves to."""
    return _locate(str(name_or_path))


def load_preset(name_or_path: str, overrides: Sequence[str] = ()) -> Preset:
    """The preset of a name (see :func:`list_presets`) or a YAML file, with ``--set`` overrides applied."""
    path = _locate(str(name_or_path))
    data, folder = _resolve(path)
    source = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return _build(path.stem, apply_overrides(data, overrides), source, folder=folder)


def resolved_dict(preset: Preset) -> dict[str, Any]:
    """The fully resolved preset as plain JSON-able data; :func:`preset_from_dict` reads it back."""
    return {"name": preset.name, "description": preset.description, **({"notice": preset.notice} if preset.notice else {}),
            **{section: config_to_dict(getattr(preset, section)) for section in SECTIONS
               if getattr(preset, section) is not None}}


def preset_from_dict(data: Mapping[str, Any], source: str = "preset data") -> Preset:
    """The inverse of :func:`resolved_dict` (e.g. the preset stored in a latent file)."""
    with _about(source):
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ConfigError("preset data must be a mapping with a name")
        unknown = sorted(set(data) - {"name", "description", "notice", *SECTIONS})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}",
                              hint=f"allowed keys: name, description, notice, {', '.join(SECTIONS)}")
    return _build(data["name"], data, source)


def preset_notice(preset: Preset) -> str | None:
    """What to tell the user on stderr whenever this preset is used, or None (random weights make noise)."""
    if preset.notice:
        return preset.notice
    if not preset.weights.is_random:
        return None
    if preset.train is not None:
        return (f"preset {preset.name!r} has untrained random weights (seed {preset.weights.random_seed}): it is "
                f"the starting point of `tempo train`, and its videos are noise until trained")
    return (f"preset {preset.name!r} uses random weights (seed {preset.weights.random_seed}) and tokenizer "
            f"{preset.weights.tokenizer or 'none'}: its videos are noise; it exists for tests")


def cache_dir(preset_name: str) -> Path:
    """The per-preset weights cache: ``$TEMPO_CACHE/<preset>``, else ``${XDG_CACHE_HOME:-~/.cache}/tempo/<preset>``."""
    if root := os.environ.get("TEMPO_CACHE"):
        return Path(root).expanduser() / preset_name
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tempo" / preset_name


def find_weights(preset: Preset, weights_dir: str | Path | None = None) -> dict[str, Path]:
    """The preset's weight files (keys among dit, vae, text_encoder, tokenizer; the tokenizer is a folder).

    Looked for in ``weights_dir``, then ``$TEMPO_WEIGHTS``, then the preset file's own folder (where shipped and
    trained presets keep their weights), then :func:`cache_dir`; in each, directly and under
    :data:`WEIGHT_SUBDIRS`. The two folders a user names hold the files themselves, so there a name with a folder
    part (the shipped ``toy/dit.safetensors``) is also looked for by its file name alone. Files ``weights_dir``
    lacks come from the later places, but a ``weights_dir`` with none of them is an error, not a silent fallback.
    Random-weight presets need no model files, and built-in tokenizers no folder. Anything missing raises one
    CheckpointError naming every missing file and every place looked.
    """
    named = [(Path(weights_dir).expanduser(), "--weights")] if weights_dir is not None else []
    if env := os.environ.get("TEMPO_WEIGHTS"):
        named.append((Path(env).expanduser(), "TEMPO_WEIGHTS"))
    own = [(Path(preset.folder), "the preset's folder")] if preset.folder else []
    roots = named + own + [(cache_dir(preset.name), "cache")]
    w = preset.weights
    wanted = {k: getattr(w, k) for k in WEIGHT_KEYS if k == "tokenizer" or not w.is_random}
    wanted = {k: name for k, name in wanted.items() if name and not name.startswith(BUILTIN_PREFIX)}
    found: dict[str, Path] = {}
    from_option = False  # whether weights_dir (roots[0] when given) supplied any file
    for key, name in wanted.items():
        exists = Path.is_dir if key == "tokenizer" else Path.is_file
        hits = [(i, root / sub / candidate) for i, (root, _) in enumerate(roots)
                for candidate in ([name, Path(name).name] if i < len(named) else [name]) for sub in WEIGHT_SUBDIRS
                if exists(root / sub / candidate)]
        if hits:
            found[key] = hits[0][1]
            from_option |= weights_dir is not None and hits[0][0] == 0
    layouts = ", ".join(s + "/" for s in WEIGHT_SUBDIRS if s)
    if missing := [name for key, name in wanted.items() if key not in found]:
        places = "\n".join(f"  {root} ({label}{'' if root.is_dir() else ', does not exist'})" for root, label in roots)
        raise CheckpointError(
            f"preset {preset.name!r} is missing {len(missing)} weight file(s): {', '.join(missing)}\n"
            f"looked in each of these folders, directly and under {layouts}:\n{places}",
            hint=f"pass --weights DIR, set TEMPO_WEIGHTS, or put the release's files in {cache_dir(preset.name)}")
    if weights_dir is not None and wanted and not from_option:
        raise CheckpointError(
            f"--weights {weights_dir} holds none of the weight files of preset "
            f"{preset.name!r} ({', '.join(wanted.values())}), directly or under {layouts}",
            hint="point --weights at the folder that holds them (the release's, or a tempo train --out folder)")
    return found
