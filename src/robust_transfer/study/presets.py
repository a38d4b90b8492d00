"""Named study presets shipped with the package (``robust_transfer/studies/*.yaml``).

``embedded`` is the offline demo (the embedded zoo fine-tuned on digits), ``paper`` the
grid of Utrera et al. 2021. Wherever a study spec is asked for, a preset's name works as
well as a path to a YAML file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from robust_transfer.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "studies"
PRESET_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Preset:
    """A shipped study spec: its name, file and one-line description."""

    name: str
    path: Path
    description: str


def list_presets() -> list[Preset]:
    """The presets shipped with the package, by name."""
    import yaml

    presets = []
    for path in sorted(PRESET_DIR.glob(f"*{PRESET_SUFFIX}")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        presets.append(Preset(path.stem, path, str(data.get("description", ""))))
    return presets


def resolve_spec_path(spec: str | os.PathLike) -> Path:
    """A study spec file: ``spec`` itself if it is a file, else the preset of that name.

    Args:
        spec: a path to a YAML spec, or a preset name (``embedded``, ``paper``).

    Returns:
        The spec file's path.

    Raises:
        ConfigError: neither an existing file nor a preset (the presets are listed).
    """
    path = Path(spec)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{spec}{PRESET_SUFFIX}"
    if path.name == str(spec) and preset.is_file():
        return preset
    names = ", ".join(p.name for p in list_presets()) or "none installed"
    raise ConfigError(f"study spec '{spec}' is neither a YAML file nor a preset name "
                      f"(presets: {names}; see `robust-transfer study presets`)")
