from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parents[2] / "conf")

TINY_SCORE = [
    "score_model.backbone.d_model=16",
    "score_model.backbone.num_layers=1",
    "score_model.backbone.num_heads=2",
    "score_model.backbone.dim_feedforward=32",
]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture
def compose_config():
    return compose_cfg


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


def train_tiny(runs_dir, *extra, run_id=None, datamodule="synthetic"):
    from tsdiff.tasks.train import run

    overrides = [
        f"datamodule={datamodule}",
        "trainer=fast",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        f"runs_dir={runs_dir}",
        *TINY_SCORE,
        *extra,
    ]
    if run_id:
        overrides.append(f"run_id={run_id}")
    return run(compose_cfg("train", overrides))
