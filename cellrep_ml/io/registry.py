"""The screen registry: which manifest and ``screen.yaml`` stand behind each dataset.

One JSON record per dataset in ``<home>/screens/<partition_key(dataset)>.json``, written
atomically. The orchestrator registers screens as they arrive and looks them up by
dataset (name or partition key) when it materializes a partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cellrep_ml.config import partition_key, screens_dir
from cellrep_ml.errors import CellrepError, ManifestError, UnknownScreenError
from cellrep_ml.io.atomic import atomic_path
from cellrep_ml.io.manifest import read_manifest
from cellrep_ml.io.screen_config import SCREEN_CONFIG_NAME, ScreenConfig

__all__ = ["ScreenRecord", "get_screen", "list_screens", "register_screen", "screen_cell_lines"]


@dataclass(frozen=True)
class ScreenRecord:
    """A registered screen.

    Attributes
    ----------
    dataset : str
        The dataset name (as in the manifest and ``screen.yaml``).
    manifest_path : Path
        Absolute path of the manifest.
    config_path : Path
        Absolute path of its ``screen.yaml``.
    cell_lines : tuple of str
        Cell-line names present in the manifest, sorted.
    """

    dataset: str
    manifest_path: Path
    config_path: Path
    cell_lines: tuple[str, ...]

    @property
    def key(self) -> str:
        """The dataset's partition key."""
        return partition_key(self.dataset)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "manifest_path": str(self.manifest_path),
                "config_path": str(self.config_path), "cell_lines": list(self.cell_lines)}

    @classmethod
    def from_dict(cls, d: dict) -> ScreenRecord:
        return cls(dataset=str(d["dataset"]), manifest_path=Path(d["manifest_path"]),
                   config_path=Path(d["config_path"]),
                   cell_lines=tuple(str(c) for c in d["cell_lines"]))


def register_screen(manifest_path: str | Path, *, home: Path | None = None) -> ScreenRecord:
    """Register (or re-register) the screen whose manifest is ``manifest_path``.

    Reads the manifest and the ``screen.yaml`` beside it, checks that they describe one
    dataset, and stores the record. Registering the same screen again leaves the record
    untouched; a different manifest for a registered dataset replaces its record.

    Parameters
    ----------
    manifest_path : str or Path
        The manifest (CSV or Parquet); ``screen.yaml`` must sit in the same folder.
    home : Path, optional
        Data home; ``$CELLREP_HOME`` by default.

    Returns
    -------
    record : ScreenRecord

    Raises
    ------
    ManifestError
        Malformed manifest, several datasets in it, a dataset other than the one in
        ``screen.yaml``, or two cell lines with the same partition key.
    ScreenConfigError
        ``screen.yaml`` missing or invalid.
    """
    manifest_path = Path(manifest_path).expanduser().resolve()
    config_path = manifest_path.parent / SCREEN_CONFIG_NAME
    config = ScreenConfig.read(config_path)
    manifest = read_manifest(manifest_path)
    datasets = sorted(set(manifest["dataset"].to_list()))
    if datasets != [config.dataset]:
        rows = manifest.filter(manifest["dataset"] != config.dataset)["row"].to_list()
        raise ManifestError(
            "the manifest's dataset does not match screen.yaml",
            path=manifest_path, row=rows[0] if rows else None,
            expected=f"every row with dataset {config.dataset!r} (from {config_path})",
            received=f"datasets {datasets}",
        )
    record = ScreenRecord(
        dataset=config.dataset,
        manifest_path=manifest_path,
        config_path=config_path,
        cell_lines=screen_cell_lines(manifest["cell_line"].to_list(), path=manifest_path),
    )
    path = _record_path(config.dataset, home)
    if path.is_file() and _load(path) == record:
        return record
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return record


def get_screen(dataset: str, *, home: Path | None = None) -> ScreenRecord:
    """The registered screen of ``dataset`` (its name or its partition key).

    Raises
    ------
    UnknownScreenError
        No such screen; the message lists the registered datasets.
    """
    path = _record_path(dataset, home)
    if not path.is_file():
        known = [r.dataset for r in list_screens(home=home)]
        raise UnknownScreenError(
            f"no screen registered for dataset {dataset!r} in {path.parent}; "
            f"registered: {known or 'none'} (register one with `cellrep ingest MANIFEST`)"
        )
    return _load(path)


def list_screens(*, home: Path | None = None) -> list[ScreenRecord]:
    """Every registered screen, sorted by dataset."""
    folder = screens_dir(home)
    if not folder.is_dir():
        return []
    return sorted((_load(p) for p in folder.glob("*.json")), key=lambda r: r.dataset)


def screen_cell_lines(names: list[str], *, path: Path | None = None) -> tuple[str, ...]:
    """Sorted distinct cell lines, checked to map to distinct partition keys.

    Raises
    ------
    ManifestError
        Two names share a partition key (``"HEK 293"`` and ``"hek-293"`` would share
        partitions and overwrite each other's files).
    """
    seen: dict[str, str] = {}
    for name in sorted(set(names)):
        key = partition_key(name)
        if key in seen:
            raise ManifestError(
                "two cell lines share a partition key", path=path,
                expected="cell-line names that differ after lower-casing and replacing "
                         "anything but [a-z0-9_-] by '_'",
                received=f"{seen[key]!r} and {name!r} -> {key!r}",
            )
        seen[key] = name
    return tuple(sorted(seen.values()))


def _record_path(dataset: str, home: Path | None) -> Path:
    return screens_dir(home) / f"{partition_key(dataset)}.json"


def _load(path: Path) -> ScreenRecord:
    try:
        return ScreenRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CellrepError(f"corrupt screen record {path} ({exc!r}); "
                           "register the screen again to rewrite it") from exc
