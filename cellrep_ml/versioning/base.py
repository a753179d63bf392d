"""The versioned-store interface: a branch per run, commits with run metadata, merge after checks.

A run writes its outputs to the data home as before (atomically), then *publishes* them:
it opens its own branch from ``main``, puts the files under a key (their path relative to
the data home), and commits with the run's metadata. Only when the run succeeded — its
blocking checks passed — is the branch merged into ``main``; a failed run's branch stays
for inspection and ``main`` is untouched.

Two implementations share these semantics:

- :class:`~cellrep_ml.versioning.local.LocalStore` (default, zero setup): a ledger of
  content manifests under ``<home>/versions/``; the files themselves stay in the data home.
- :class:`~cellrep_ml.versioning.lakefs_store.LakeFSStore`: a lakeFS repository, through
  the ``lakefs`` SDK and ``lakefs-spec``.

Semantics both follow (and the tests check):

- committing a branch with nothing changed creates no commit and returns the head (lakeFS
  refuses empty commits; so does the local store);
- :meth:`VersionedStore.version` is the newest non-merge commit that changed a key — the
  commit where that data was written. It is the asset's Dagster data version: unchanged
  data keeps its version across runs, so downstream assets go stale exactly when data
  changed;
- merging a branch that has nothing new is a no-op that returns the target's head, so
  merging twice is harmless.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellrep_ml.errors import CellrepError

__all__ = [
    "BranchNotFoundError",
    "MergeConflictError",
    "Published",
    "VersionNotAvailableError",
    "VersionedStore",
    "VersioningError",
    "RUN_BRANCH_PREFIX",
    "branch_name",
    "commit_metadata",
    "normalize_key",
]

_BRANCH_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: lakeFS accepts branch names matching ``^\w[-\w]*$``; keep well below any length limit.
_MAX_BRANCH = 120


class VersioningError(CellrepError):
    """A versioned-store operation failed (bad key, unknown ref, server error, ...)."""


class BranchNotFoundError(VersioningError, LookupError):
    """The named branch does not exist (never created, or merged and deleted)."""


class MergeConflictError(VersioningError):
    """Source and destination both changed the same keys since they diverged.

    Attributes
    ----------
    keys : list of str
        The conflicting keys (paths relative to the store root).
    """

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        self.keys = list(keys)
        super().__init__(message)


class VersionNotAvailableError(VersioningError):
    """The requested version of a key can no longer be produced by this store."""


#: Every run branch is named ``run-<run id>``.
RUN_BRANCH_PREFIX = "run-"


def branch_name(run_id: str, prefix: str = RUN_BRANCH_PREFIX) -> str:
    """The branch of one run: ``run-<run id>`` with anything unsafe replaced by ``-``.

    >>> branch_name("3f2a-77/x")
    'run-3f2a-77-x'
    """
    cleaned = _BRANCH_UNSAFE.sub("-", run_id.strip()).strip("-")
    if not cleaned:
        raise ValueError(f"cannot make a branch name from run id {run_id!r}")
    return f"{prefix}{cleaned}"[:_MAX_BRANCH]


def normalize_key(key: str) -> str:
    """A store key: a relative POSIX path without ``.``/``..`` parts or surrounding slashes.

    Raises
    ------
    ValueError
        If the key is empty, absolute after stripping, or climbs with ``..``.
    """
    parts = [p for p in str(key).replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad store key {key!r}; expected a relative path like 'raw/ds/line'")
    return "/".join(parts)


def commit_metadata(
    *,
    run_id: str,
    partition: str | None = None,
    code_version: str | None = None,
    asset_key: str | None = None,
    **extra: object,
) -> dict[str, str]:
    """Commit metadata as lakeFS stores it: a flat ``str -> str`` mapping.

    Parameters
    ----------
    run_id : str
        The Dagster run that wrote the data (``dagster_run_id``).
    partition, code_version, asset_key : str, optional
        Partition key, the asset's code version and its key (``a/b`` form).
    **extra
        Further fields, converted with ``str``; ``None`` values are dropped.
    """
    fields: dict[str, object] = {
        "dagster_run_id": run_id, "partition": partition, "code_version": code_version,
        "asset_key": asset_key, **extra,
    }
    return {k: str(v) for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Published:
    """What :meth:`VersionedStore.publish` did.

    Attributes
    ----------
    key : str
        The key the files were put under.
    branch : str
        The run's branch.
    commit : str
        Head of the branch after the commit (the previous head if nothing changed).
    data_version : str
        The newest commit that changed the data keys: the asset's data version.
    changed : int
        Files added, changed or removed under ``key`` by this put.
    """

    key: str
    branch: str
    commit: str
    data_version: str
    changed: int
    metadata: Mapping[str, str] = field(default_factory=dict)


class VersionedStore(ABC):
    """A store of data versions with branches, commits and merges.

    Keys are POSIX paths relative to the store root (for cellrep: relative to the data
    home, e.g. ``crops/<dataset>/<cell_line>``). A key names a file or a directory (a Zarr
    store, a partition folder); putting a directory replaces everything under the key.

    Attributes
    ----------
    main : str
        The integration branch runs start from and merge into.
    """

    main: str = "main"
    backend: str = ""

    @abstractmethod
    def begin(self, run_id: str) -> str:
        """Create (or reuse) the run's branch from :attr:`main`; return its name.

        Idempotent: a second call for the same run id returns the same branch unchanged,
        so several assets (or a retried step) of one run share one branch.
        """

    @abstractmethod
    def put(self, local_path: str | Path, key: str, branch: str) -> int:
        """Stage the file or directory ``local_path`` under ``key`` on ``branch``.

        Returns
        -------
        int
            Files added, changed or removed under ``key`` (0: nothing to commit).

        Raises
        ------
        FileNotFoundError
            If ``local_path`` does not exist.
        BranchNotFoundError
            If ``branch`` does not exist.
        """

    @abstractmethod
    def commit(self, branch: str, message: str, metadata: Mapping[str, str] | None = None) -> str:
        """Commit what is staged on ``branch``; return the commit id.

        With nothing staged no commit is created and the branch head is returned.
        """

    @abstractmethod
    def merge(self, branch: str, into: str | None = None, *, message: str | None = None,
              metadata: Mapping[str, str] | None = None) -> str:
        """Merge ``branch`` into ``into`` (default :attr:`main`); return the new head of ``into``.

        Nothing new on ``branch``: no-op, returns the head of ``into``.

        Raises
        ------
        BranchNotFoundError
            If ``branch`` does not exist.
        MergeConflictError
            If both sides changed the same key since they diverged.
        """

    @abstractmethod
    def get(self, key: str, local_path: str | Path, ref: str | None = None) -> Path:
        """Write ``key`` as of ``ref`` (default :attr:`main`) to ``local_path``, atomically."""

    @abstractmethod
    def head(self, ref: str | None = None) -> str:
        """The commit id a branch name or commit id resolves to (default :attr:`main`)."""

    @abstractmethod
    def version(self, keys: str | Sequence[str], ref: str | None = None) -> str | None:
        """The newest non-merge commit reachable from ``ref`` that changed any of ``keys``.

        ``None`` if no commit ever wrote them.
        """

    @abstractmethod
    def has_branch(self, branch: str) -> bool:
        """Whether ``branch`` exists."""

    @abstractmethod
    def branches(self) -> list[str]:
        """Names of every branch, sorted; kept run branches are the failed runs to inspect."""

    @abstractmethod
    def discard(self, branch: str) -> bool:
        """Delete ``branch`` (never :attr:`main`); return whether it existed.

        Its commits stay in the history of any branch they were merged into.
        """

    def publish(self, run_id: str, local_path: str | Path, key: str, *, message: str,
                metadata: Mapping[str, str] | None = None,
                data_keys: Sequence[str] | None = None) -> Published:
        """Put ``local_path`` under ``key`` on the run's branch and commit it.

        Parameters
        ----------
        run_id : str
            The run; its branch is :func:`branch_name` of it.
        local_path : str or Path
            The file or directory written by the run (already complete on disk).
        key : str
            Where it goes in the store.
        message, metadata
            Commit message and metadata (see :func:`commit_metadata`).
        data_keys : sequence of str, optional
            Keys whose newest change is the data version; default ``[key]``. Naming only
            the data files (not a report with timings beside them) keeps the version
            stable when the data are byte-identical.

        Returns
        -------
        Published
        """
        key = normalize_key(key)
        branch = self.begin(run_id)
        changed = self.put(local_path, key, branch)
        commit = self.commit(branch, message, metadata)
        version = self.version(list(data_keys) if data_keys else [key], branch)
        if version is None:  # e.g. an empty directory: fall back to the branch head
            version = commit
        return Published(key=key, branch=branch, commit=commit, data_version=version,
                         changed=changed, metadata=dict(metadata or {}))
