"""The embedded Dagster instance's settings (``$DAGSTER_HOME/dagster.yaml``).

Written once if missing, never overwritten (an operator's file wins):

- telemetry off: our machines reach no outside host;
- every concurrency pool limited to one step at a time: the ``warehouse`` pool is the
  DuckDB single writer (one writing step across all runs; the warehouse's file lock
  backs it up), and the ``training`` pool keeps a laptop from training two models at once.
  A cluster deployment raises ``training`` with ``dagster instance concurrency set``.
"""

from __future__ import annotations

import os
from pathlib import Path

INSTANCE_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


def ensure_instance_config(dagster_home: str | Path | None = None) -> Path:
    """Create ``dagster.yaml`` under ``dagster_home`` (default ``$DAGSTER_HOME``) if missing."""
    home = Path(dagster_home or os.environ["DAGSTER_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return config


if __name__ == "__main__":
    print(ensure_instance_config())
