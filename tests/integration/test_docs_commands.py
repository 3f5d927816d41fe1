"""Every shell command in README.md and docs/*.md is composed with its Hydra config and checked (a dry run), and
the commands of the user-guide pages on bundled, generated or local data are run, in page order, with tiny budgets.

Placeholders (``<run_id>``, ``$RUN_ID``) become ``latest`` or a dummy value; the tiny budgets are appended, so
they win over the page's own (``trainer.max_steps=2000`` becomes 2 steps). A line whose values are ALL-CAPS
template letters (``model=M seed=S trainer.max_steps=STEPS``, the pattern of a results table) is a template, not
a command, and is left out; so are optional ``[key=value]`` parts. Commands on Kaggle data, multi-device
launches and other model families are only composed here (their own tests run them).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import TINY_SCORE, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_PAGES = ["index.md", "datasets.md", "frequency_diffusion.md", "metrics.md", "scaling.md"]  # the guide's own pages
NOT_LOCAL = ("ecg", "nasdaq", "nasa", "usdroughts", "mimiciii", "uea", "forecast_csv")  # need downloads / your files
CMD = re.compile(r"(?:^|/)cmd/(\w+)\.py$")
TINY = {
    "train": ["trainer.max_epochs=1", "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none", *TINY_SCORE],
    "sample": ["num_samples=8", "sampler.steps=3", "progress=false", "logger=none", "num_directions=20", "quality.num_runs=2",
               "quality.context_fid_iterations=2", "quality.discriminative_iterations=2", "quality.reference_size=64"],
    "evaluate": ["num_runs=1", "metric_settings.context_fid.iterations=2", "metric_settings.discriminative.iterations=2",
                 "metric_settings.predictive.iterations=2", "metric_settings.segment_dtw_nn.max_windows=16"],
}


def _blocks(path: Path, lang: str):
    """The ``lang`` fenced blocks of a page, as text."""
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def _commands(line: str):
    """``(command, overrides)`` for every ``cmd/<command>.py`` call on a shell line (also inside ``bash -c "..."``)."""
    line = re.sub(r"<[^<>]*>", lambda m: re.sub(r"\s+", "_", m.group(0)), line)  # <dir with ETTh1.csv>: one token
    tokens = shlex.split(line, comments=True)
    tokens = [t for tok in tokens for t in (shlex.split(tok) if " " in tok and "cmd/" in tok else [tok])]
    found, current = [], None
    for tok in tokens:
        if CMD.search(tok):
            current = (CMD.search(tok).group(1), [])
            found.append(current)
        elif tok in ("&&", "||", ";", "|"):
            current = None
        elif current is not None and "=" in tok and not tok.startswith("-"):
            current[1].append(tok)
    return found


PLACEHOLDER = re.compile(r"<[^>]*>|\$\w+")


def _fill(override: str) -> str:
    key, _, value = override.partition("=")
    if not PLACEHOLDER.search(value):
        return override
    if key.lstrip("+") in ("model_id", "resume"):
        return f"{key}=latest"
    return key + "=" + PLACEHOLDER.sub("x1", value)


TEMPLATE = re.compile(r"=([A-Z][A-Z0-9]*|[A-Z]+_\w*)$")  # model=M, seed=S, run_id=NAME_sS


def _inline(path: Path):
    """Commands quoted inline in the prose (`python cmd/sample.py model_id=<run> seed=S`), outside code blocks."""
    prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [m.replace("\n", " ") for m in re.findall(r"`((?:OMP_NUM_THREADS=1 )?(?:python|torchrun)[^`]*cmd/\w+\.py[^`]*)`", prose)]


def doc_commands(pages=PAGES):
    out = []
    for page in pages:
        for block in [*_blocks(page, "shell"), *_inline(page)]:
            for line in block.replace("\\\n", " ").splitlines():
                for name, overrides in _commands(line):
                    overrides = [o for o in overrides if not o.startswith("[")]
                    if not any(TEMPLATE.search(o) for o in overrides):
                        out.append((page.name, line.strip(), name, [_fill(o) for o in overrides]))
    return out


def test_the_docs_hold_commands_of_every_entry_point():
    names = {name for _, _, name, _ in doc_commands()}
    assert {"train", "sample", "evaluate", "forecast", "benchmark_cache", "ablation_cache", "class_coverage"} <= names
    assert len(doc_commands()) > 60


# Commands a page quotes as the record of an older measurement, which the current config no longer accepts. Each
# is expected to FAIL (strict): when its page is fixed the entry must go. Owner: the page's author.
STALE: dict[tuple[str, str], str] = {}


def _params():
    for page, line, name, overrides in doc_commands():
        stale = [why for (p, frag), why in STALE.items() if p == page and frag in overrides]
        marks = [pytest.mark.xfail(strict=True, reason=stale[0])] if stale else []
        yield pytest.param(page, line, name, overrides, marks=marks, id=f"{page}:{name}:{' '.join(overrides)[:60]}")


@pytest.mark.parametrize("page, line, name, overrides", _params())
def test_every_documented_command_composes_and_passes_the_option_checks(page, line, name, overrides):
    from tsdiff.tasks.validate import RULES, check_rules

    cfg = compose_cfg(name, overrides)  # an unknown key or config group fails here, as it would on the command line
    if name in RULES:
        check_rules(cfg, RULES[name])


def _runnable(page: str, line: str, name: str, overrides: list[str]) -> bool:
    keys = dict(o.lstrip("+").split("=", 1) for o in overrides)
    return (page in RUN_PAGES and name in TINY and not line.startswith(("torchrun", "srun"))
            and "model" not in keys and keys.get("datamodule") not in NOT_LOCAL and "trainer" not in keys
            and "real_path" not in keys and "trainer.devices" not in keys)


@pytest.mark.slow
def test_the_guide_commands_run_with_tiny_budgets(tmp_path, monkeypatch):
    """In page order: the data-making ``python -c`` lines, then every runnable command, then the Python blocks."""
    from tsdiff.tasks import evaluate, sample, train

    monkeypatch.chdir(tmp_path)  # relative paths of the pages (my_windows.npy, lightning_logs/) land here
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tasks = {"train": train.run, "sample": sample.run, "evaluate": evaluate.run}
    ran = []
    for page in RUN_PAGES:
        for block in _blocks(ROOT / "docs" / page, "shell"):
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith("python -c "):
                    exec(shlex.split(line)[2], {})
                    continue
                for name, overrides in _commands(line):
                    overrides = [_fill(o) for o in overrides]
                    if _runnable(page, line, name, overrides):
                        monkeypatch.delenv("TSDIFF_RUN_ID", raising=False)  # each documented train command is a new run
                        tiny = TINY[name]
                        if "score_model=lstm" in overrides:  # the LSTM backbone has no attention heads
                            tiny = [o for o in tiny if "num_heads" not in o and "dim_feedforward" not in o]
                        tasks[name](compose_cfg(name, [*overrides, f"runs_dir={tmp_path / 'lightning_logs'}", *tiny]))
                        ran.append((page, name))
    assert sum(1 for _, n in ran if n == "train") >= 12 and sum(1 for _, n in ran if n == "sample") >= 5
    assert {p for p, _ in ran} == set(RUN_PAGES)
    for page in ("datasets.md", "metrics.md", "frequency_diffusion.md", "scaling.md"):
        for block in _blocks(ROOT / "docs" / page, "python"):
            code = block.replace("num_samples=256, num_diffusion_steps=100", "num_samples=8, num_diffusion_steps=3")
            exec(compile(code, f"{page} python block", "exec"), {})


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to dashes)."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_of_the_docs_points_at_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                broken.append(f"{page.name}: {target}")
    assert not broken, sorted(broken)
