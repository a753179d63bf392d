"""``python -m cellrep_assets.training.pipes_entry TRAIN-ARGS...``: training under Dagster Pipes.

Runs exactly ``python -m cellrep_ml.train TRAIN-ARGS...`` (the same program locally and in
a Kubernetes pod) inside a Pipes session, and sends its summary (MLflow run id, model
version, epochs, best validation loss) back to the orchestrator as a custom message. The
science package stays free of Dagster: this wrapper is the only place they meet.
"""

from __future__ import annotations

import sys

from dagster_pipes import open_dagster_pipes


def main(argv: list[str]) -> int:
    from cellrep_ml.train.__main__ import main as train_main

    with open_dagster_pipes() as pipes:
        pipes.log.info(f"training: python -m cellrep_ml.train {' '.join(argv)}")
        summary = train_main.main(args=argv, prog_name="python -m cellrep_ml.train",
                                  standalone_mode=False)
        pipes.report_custom_message(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
