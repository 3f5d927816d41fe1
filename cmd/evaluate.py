"""Score generated time series against real ones.

    python cmd/evaluate.py model_id=<run_id|latest> [metrics=[context_fid,discriminative]] [mode=fast]
    python cmd/evaluate.py real_path=real.npy fake_path=fake.npy results_path=out.json logger=csv

All logic lives in :func:`tsdiff.tasks.evaluate.run`; see conf/evaluate.yaml for every option.
"""

import hydra
from omegaconf import DictConfig



@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tsdiff.tasks.cli import run_task
    from tsdiff.tasks.evaluate import run

    run_task(run, cfg)


if __name__ == "__main__":
    from tsdiff.tasks.cli import main_guard

    main_guard(main)
