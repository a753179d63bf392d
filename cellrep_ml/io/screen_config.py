"""The screen description, ``screen.yaml``, that sits beside a manifest.

It declares what the manifest cannot: which channel plays which role (channels are
addressed by name, never by position), the crop geometry and the dimensionality::

    dataset: demo-opencell
    dims: 2                    # 2 (C,Y,X) or 3 (C,Z,Y,X)
    channels:
      protein: GFP             # the tagged protein
      nucleus: Hoechst         # nuclear stain; null when the screen has none (yeast)
      markers: []              # other reference channels, e.g. [microtubules, ER]
      segment_on: Hoechst      # channel to segment; defaults to the nucleus
    crop_size: 100             # square crop around each nucleus, in field pixels
    output_size: 100           # crops are rescaled to this (HPA recipe: 512 -> 64)
    pixel_size_um: 0.2
    min_cells_per_field: 1     # QC: fields with fewer kept cells are dropped
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from cellrep_ml.errors import ScreenConfigError

SCREEN_CONFIG_NAME = "screen.yaml"


@dataclass(frozen=True)
class ChannelRoles:
    protein: str
    nucleus: str | None
    markers: tuple[str, ...] = ()
    segment_on: str | None = None

    @property
    def all(self) -> tuple[str, ...]:
        """Every role-bearing channel name: protein, nucleus (if any), then markers."""
        return tuple(c for c in (self.protein, self.nucleus, *self.markers) if c is not None)

    @property
    def segmentation(self) -> str:
        """The channel nuclei (or, for yeast, whole cells) are segmented on."""
        return self.segment_on or self.nucleus or self.markers[0]


@dataclass(frozen=True)
class ScreenConfig:
    dataset: str
    channels: ChannelRoles
    dims: int = 2
    crop_size: int = 64
    output_size: int | None = None
    pixel_size_um: float | None = None
    min_cells_per_field: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def crop_output_size(self) -> int:
        return self.output_size or self.crop_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"]["markers"] = list(self.channels.markers)
        if not d["extra"]:
            d.pop("extra")
        return d

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / SCREEN_CONFIG_NAME
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @classmethod
    def from_dict(cls, d: dict, *, source: str | Path | None = None) -> ScreenConfig:
        try:
            ch = d["channels"]
            roles = ChannelRoles(
                protein=str(ch["protein"]),
                nucleus=None if ch.get("nucleus") is None else str(ch["nucleus"]),
                markers=tuple(str(m) for m in ch.get("markers") or ()),
                segment_on=None if ch.get("segment_on") is None else str(ch["segment_on"]),
            )
            known = {"dataset", "channels", "dims", "crop_size", "output_size",
                     "pixel_size_um", "min_cells_per_field", "extra"}
            cfg = cls(
                dataset=str(d["dataset"]),
                channels=roles,
                dims=int(d.get("dims", 2)),
                crop_size=int(d.get("crop_size", 64)),
                output_size=None if d.get("output_size") is None else int(d["output_size"]),
                pixel_size_um=None if d.get("pixel_size_um") is None else float(d["pixel_size_um"]),
                min_cells_per_field=int(d.get("min_cells_per_field", 1)),
                extra={**(d.get("extra") or {}), **{k: v for k, v in d.items() if k not in known}},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ScreenConfigError(
                f"invalid screen description ({exc!r})",
                path=source,
                expected="keys dataset, channels.protein (and channels.nucleus or markers)",
            ) from exc
        if cfg.dims not in (2, 3):
            raise ScreenConfigError("invalid dims", path=source, expected="2 or 3",
                                    received=str(cfg.dims))
        if cfg.crop_size < 8:
            raise ScreenConfigError("crop_size too small", path=source, expected=">= 8",
                                    received=str(cfg.crop_size))
        if len(set(roles.all)) != len(roles.all):
            raise ScreenConfigError("a channel name plays two roles", path=source,
                                    received=str(roles.all))
        if roles.nucleus is None and not roles.markers and roles.segment_on is None:
            raise ScreenConfigError("no channel to segment", path=source,
                                    expected="channels.nucleus, channels.segment_on or a marker")
        if roles.segment_on is not None and roles.segment_on not in roles.all:
            raise ScreenConfigError("segment_on is not one of the declared channels",
                                    path=source, expected=str(roles.all),
                                    received=roles.segment_on)
        return cfg

    @classmethod
    def read(cls, path: str | Path) -> ScreenConfig:
        """Read ``screen.yaml`` (or the one inside a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / SCREEN_CONFIG_NAME
        if not path.is_file():
            raise ScreenConfigError("screen description not found", path=path,
                                    expected=f"a {SCREEN_CONFIG_NAME} beside the manifest")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ScreenConfigError(f"not valid YAML ({exc})", path=path) from exc
        if not isinstance(data, dict):
            raise ScreenConfigError("not a mapping", path=path, expected="a YAML mapping")
        return cls.from_dict(data, source=path)
