"""The stage plugin hook. Built-in stages register through it exactly as an outside package would.

A package exposes stages with an entry point in the ``tempo.stages`` group whose object is a :class:`Stage`
(or a zero-argument callable returning one, or a list of them)::

    [project.entry-points."tempo.stages"]
    upscale = "my_package.upscale:STAGE"

``Stage.command`` is a plain function whose parameters carry ``typing.Annotated[..., typer.Option(...)]``
hints; the CLI turns it into a command. No Click objects cross this boundary (Typer vendors its own Click).
Stage modules must not import torch at import time, so ``tempo --help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from tempo_cli.errors import TempoError

ENTRY_POINT_GROUP = "tempo.stages"


@dataclass(frozen=True)
class Stage:
    """One command of the pipeline: its name, a one-line summary, and the Typer-annotated function."""

    name: str
    summary: str
    command: Callable[..., None]
    order: int = 100  # where it is listed: built-ins use 10, 20, ...


@dataclass(frozen=True)
class LoadedStage:
    stage: Stage
    source: str  # "package:object" of the entry point


class PluginError(TempoError):
    """A stage plugin could not be loaded."""


def load_stages() -> list[LoadedStage]:
    """Every stage registered under ``tempo.stages``, sorted by order then name; duplicates are errors."""
    loaded: dict[str, LoadedStage] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others' reason
            raise PluginError(f"stage plugin {point.name!r} ({point.value}) failed to load: {exc}") from exc
        found = obj() if callable(obj) and not isinstance(obj, Stage) else obj
        for stage in found if isinstance(found, (list, tuple)) else [found]:
            if not isinstance(stage, Stage):
                raise PluginError(f"stage plugin {point.name!r} ({point.value}) is not a tempo Stage")
            if stage.name in loaded:
                raise PluginError(f"two plugins register the stage {stage.name!r}: "
                                  f"{loaded[stage.name].source} and {point.value}")
            loaded[stage.name] = LoadedStage(stage, point.value)
    return sorted(loaded.values(), key=lambda s: (s.stage.order, s.stage.name))
