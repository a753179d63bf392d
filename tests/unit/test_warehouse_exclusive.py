"""cellrep_ml.warehouse.exclusive: the writers' lock held for an outside writer (dbt)."""

from __future__ import annotations

import polars as pl
import pytest

from cellrep_ml import warehouse as wh
from cellrep_ml.config import warehouse_path


def test_exclusive_keeps_writers_out_and_releases():
    frame = pl.DataFrame({"dataset": ["d"], "x": [1]})
    with wh.exclusive() as path:
        assert path == warehouse_path()
        assert not path.exists()  # the database itself is not opened or created
        with pytest.raises(TimeoutError, match="another process is writing"):
            wh.replace_partition("t", frame, {"dataset": "d"}, timeout=0.2)
        with pytest.raises(TimeoutError, match="another process is writing"), \
                wh.exclusive(timeout=0.2):
            pass
    assert wh.replace_partition("t", frame, {"dataset": "d"}, timeout=1.0) == 1
    with wh.writer(), pytest.raises(TimeoutError), wh.exclusive(timeout=0.2):
        pass
