"""``python cmd/class_coverage.py runs_dir=... +groups.l2d=[id1,id2,id3] +groups.latent_only=[...]``: compare groups
of sampled runs (e.g. one model family over 3 training seeds) on a class-labelled data set.

For every run a sample folder written by ``cmd/sample.py`` is read (``samples.npy`` and its ``metrics.json``;
``sample_index``: -1 the newest, 0 the first); all runs must have been trained on the same data set, one with ``labels(split)``
(:mod:`tsdiff.data.uea`; the seed of the split may differ: the classifier and the real histogram come from the
first run's split). Per group, over its runs (mean ± 95 % Student-t interval over the training seeds):

* Context-FID and discriminative score against the training windows, as ``cmd/sample.py`` measured them
  (each run's value is already the mean of its ``quality.num_runs`` evaluation runs);
* the class coverage (:mod:`tsdiff.metrics.class_coverage`): the class histogram of the samples under a
  classifier trained on the real training windows, and its total variation distance (TVD) to the real one.

Reference rows: ``gaussian`` and ``held_out`` (from the first run's sample folder / data), scored the same way.
The result is printed and written to ``<results_path>`` (never overwriting) when given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from tsdiff.results import write_result
from tsdiff.runs import resolve_run_dir
from tsdiff.tasks.common import format_table, load_run_config


def _samples_dir(run_dir: Path, index: int = -1) -> Path:
    """The run's sample folder number ``index`` in time order (-1: the newest)."""
    folders = sorted(p for p in (run_dir / "samples").glob("*") if (p / "samples.npy").is_file()) if (run_dir / "samples").is_dir() else []
    if not folders:
        raise FileNotFoundError(f"run '{run_dir.name}' has no samples; run `python cmd/sample.py model_id={run_dir.name}` first")
    if not -len(folders) <= index < len(folders):
        raise ValueError(f"sample_index={index} but run '{run_dir.name}' has {len(folders)} sample folders")
    return folders[index]


def data_identity(datamodule_cfg: Any) -> dict:
    """What names a run's data set: its datamodule config without the seed of its split and without unset (null)
    options, so that a run saved before an option existed (e.g. ``kaggle_slug``) still matches a newer one."""
    items = OmegaConf.to_container(datamodule_cfg) if isinstance(datamodule_cfg, DictConfig) else dict(datamodule_cfg)
    return {k: v for k, v in items.items() if k != "seed" and v is not None}


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from tsdiff.metrics.class_coverage import class_coverage
    from tsdiff.metrics.suite import summarize_runs
    from tsdiff.tasks.sample import gaussian_baseline

    groups = OmegaConf.to_container(cfg.groups, resolve=True) if cfg.get("groups") else {}
    if not groups or any(not isinstance(v, list) or not v for v in groups.values()):
        raise ValueError("groups must map a name to a non-empty list of run ids, e.g. groups.l2d=[abc123,def456]")
    runs = {name: [resolve_run_dir(str(i), cfg.runs_dir) for i in ids] for name, ids in groups.items()}
    first = next(iter(runs.values()))[0]
    train_cfg = load_run_config(first)
    if cfg.get("data_root") is not None:
        train_cfg.data_root = cfg.data_root
    dm = instantiate(train_cfg.datamodule)
    dm.prepare_data()
    dm.setup("fit")
    if not hasattr(dm, "labels"):
        raise ValueError(f"{type(dm).__name__} has no class labels; class coverage needs a labelled set (datamodule=japanese_vowels or uea)")
    first_data = data_identity(load_run_config(first).datamodule)
    for name, dirs in runs.items():
        for d in dirs:
            if data_identity(load_run_config(d).datamodule) != first_data:
                raise ValueError(f"run '{d.name}' ({name}) was trained on other data than '{first.name}'; compare runs of one data set")
    train, y = dm.train_array("train"), dm.labels("train")
    held_x = np.concatenate([dm.train_array("val"), dm.train_array("test")])
    held_y = np.concatenate([dm.labels("val"), dm.labels("test")])
    seed, index = int(cfg.seed), int(cfg.get("sample_index", -1))
    n = int(np.load(_samples_dir(first, index) / "samples.npy").shape[0])
    refs = {"gaussian": gaussian_baseline(train, n, seed), "held_out": held_x}
    candidates = {**refs}
    quality: dict[str, list[dict]] = {}
    for name, dirs in runs.items():
        for k, d in enumerate(dirs):
            folder = _samples_dir(d, index)
            candidates[f"{name}#{k}"] = np.load(folder / "samples.npy")
            q = (OmegaConf.to_container(OmegaConf.load(folder / "metrics.json")) or {}).get("quality") or {}
            quality.setdefault(name, []).append(q.get("sets", {}))
    cov = class_coverage(train, y, candidates, dm.n_classes, held_out=(held_x, held_y), seed=seed, steps=int(cfg.classifier_steps))
    rows, out = [], {"real_histogram": cov["real"], "classifier_accuracy": cov["classifier_accuracy"], "groups": {}}
    for name in [*runs, *refs]:
        keys = [f"{name}#{k}" for k in range(len(runs[name]))] if name in runs else [name]
        tvd = summarize_runs([cov["sets"][k]["tvd"] for k in keys])
        # a group's own "model" rows; a reference row as scored in the first group's sample folders
        sets, key = (quality[name], "model") if name in runs else (quality[next(iter(runs))], name)
        metric = {m: summarize_runs([s[key][m]["mean"] for s in sets]) for m in ("context_fid", "discriminative")
                  if all(key in s for s in sets)}
        hist = np.mean([cov["sets"][k]["histogram"] for k in keys], axis=0).round(3).tolist()
        out["groups"][name] = {"runs": [d.name for d in runs.get(name, [])], "tvd": tvd, **metric, "histogram": hist,
                               "classes_covered": min(cov["sets"][k]["classes_covered"] for k in keys)}
        fmt = lambda s: f"{s['mean']:.4f} ± {s['ci95']:.4f}" if s else "n/a"
        rows.append({"group": name, "runs": len(keys), "context_fid": fmt(metric.get("context_fid")),
                     "discriminative": fmt(metric.get("discriminative")), "class_tvd": fmt(tvd),
                     "classes": f"{out['groups'][name]['classes_covered']}/{dm.n_classes}"})
    print(f"class coverage on {dm.dataset_name} ({dm.n_classes} classes; classifier accuracy on held-out real windows "
          f"{cov['classifier_accuracy']:.3f}); C-FID / discriminative vs the training windows from each run's cmd/sample.py; "
          "mean ± 95% interval over the group's runs:")
    print(format_table(rows, ["group", "runs", "context_fid", "discriminative", "class_tvd", "classes"]))
    print("real class histogram:", [round(v, 3) for v in cov["real"]])
    for name, g in out["groups"].items():
        print(f"  {name:<12} {g['histogram']}")
    if cfg.get("results_path"):
        out["results_path"] = str(write_result(Path(cfg.results_path), out))
    return out
