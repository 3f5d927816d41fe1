"""Hydra entry point: `python cmd/forecast.py [overrides]` -> :func:`tsdiff.tasks.forecast.run`.

Scores TimeDiff (DPM-Solver++ and 100-step ancestral sampling) and the baselines (seasonal naive,
AR, DLinear) on the same test windows; see conf/forecast.yaml.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="forecast", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tsdiff.tasks.cli import run_task
    from tsdiff.tasks.forecast import run

    run_task(run, cfg)


if __name__ == "__main__":
    from tsdiff.tasks.cli import main_guard

    main_guard(main)
