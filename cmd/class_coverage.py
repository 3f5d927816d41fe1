"""Hydra entry point: `python cmd/class_coverage.py [overrides]` -> :func:`tsdiff.tasks.class_coverage.run`."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="class_coverage", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tsdiff.tasks.class_coverage import run
    from tsdiff.tasks.cli import run_task

    run_task(run, cfg)


if __name__ == "__main__":
    from tsdiff.tasks.cli import main_guard

    main_guard(main)
