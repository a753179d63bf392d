"""Exception types a user can act on.

Every error raised on bad input says *where* (file, manifest row), *what was expected* and
*what was found*, so a biologist can fix the screen without reading code.
"""

from __future__ import annotations

from pathlib import Path


class CellrepError(Exception):
    """Base class of every error cellrep raises on purpose."""


class InputError(CellrepError, ValueError):
    """Bad user input: a manifest row, a file, a channel, a configuration value.

    Parameters
    ----------
    reason : str
        What is wrong, in words (e.g. ``"missing channel 'GFP'"``).
    path : str or Path, optional
        The file concerned.
    row : int, optional
        1-based data row of the manifest (the header is row 0), when known.
    expected, received : str, optional
        What was expected and what was found instead.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        expected: str | None = None,
        received: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.row = row
        self.expected = expected
        self.received = received
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.row is not None:
            parts.append(f"manifest row {self.row}")
        if self.path is not None:
            parts.append(f"file {self.path}")
        where = f"[{', '.join(parts)}] " if parts else ""
        msg = f"{where}{self.reason}"
        if self.expected is not None:
            msg += f"; expected {self.expected}"
        if self.received is not None:
            msg += f", got {self.received}"
        return msg


class ManifestError(InputError):
    """The manifest itself is malformed: missing columns, duplicate rows, bad values."""


class ImageReadError(InputError):
    """An image file is missing, unreadable, truncated or of an unsupported kind."""


class ChannelError(InputError):
    """A channel named by the screen's roles is missing or inconsistent."""


class ScreenConfigError(InputError):
    """The screen description (``screen.yaml``) is missing or invalid."""


class DuplicateFieldError(ManifestError):
    """Two or more manifest rows describe the same field of view (same ``FIELD_KEY``)."""


class PathEscapeError(ManifestError):
    """A manifest path points outside the screen root (the manifest's folder)."""


class ImageShapeError(ImageReadError):
    """An image has the wrong dimensionality, or its per-channel files disagree in size."""


class UnsupportedDtypeError(ImageReadError):
    """An image's pixel type is not one cellrep reads (uint8, uint16, float32)."""


class BlankImageError(ImageReadError):
    """Every requested channel of an image is constant: nothing was imaged."""


class UnknownScreenError(CellrepError, LookupError):
    """No screen is registered under the requested dataset name."""


class ReferenceDataError(CellrepError):
    """Reference annotations could not be found or parsed."""
