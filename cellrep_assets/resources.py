"""Resources shared by every domain."""


from pathlib import Path

import dagster as dg

from cellrep_ml.config import data_home


class DataHome(dg.ConfigurableResource):
    """The cellrep data home. Empty ``root`` means ``$CELLREP_HOME`` (default ./.cellrep)."""

    root: str = ""

    @property
    def path(self) -> Path:
        return Path(self.root).expanduser().resolve() if self.root else data_home()


def default_resources() -> dict[str, object]:
    """Resources of the embedded (local) environment: data home, subprocess training, dbt."""
    from cellrep_assets.enrichment import dbt_resource
    from cellrep_assets.training.launcher import TrainingLauncher

    return {"home": DataHome(), "launcher": TrainingLauncher(), "dbt": dbt_resource()}
