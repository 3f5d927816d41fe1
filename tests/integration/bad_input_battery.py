"""Measure the bad-input battery: every case of test_bad_inputs.py, in-process through ``run_task``, against
whatever tsdiff is on PYTHONPATH (so an older checkout can be measured too). Not a test; run it as

    PYTHONPATH=src python tests/integration/bad_input_battery.py

It prints one line per case and the counts: clean one-line exits (status 2), tracebacks (an exception
escaping ``run_task``, which the real command prints as a traceback), other exit codes, bad inputs accepted
without an error, and cases that changed or left files."""
import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "disabled")
import test_bad_inputs as T
from conftest import compose_cfg, train_tiny
tmp = Path(tempfile.mkdtemp())
tpl = tmp / "tpl"
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    train_tiny(tpl / "runs", run_id="good")
    T._other_model_checkpoint(tpl / "foreign" / "last.ckpt")
for rel in ("work", "data/forecast"):
    (tpl / rel).mkdir(parents=True)
(tpl / "data" / "forecast" / "good.csv").write_text(T._GOOD_CSV)
from tsdiff.tasks.cli import run_task
stats = {"clean": 0, "traceback": 0, "other_exit": 0, "files_changed": 0, "no_error": 0}
for name, case in T.CASES.items():
    root = tmp / name
    shutil.copytree(tpl, root)
    if case.setup: case.setup(root)
    os.chdir(root / "work")
    saved = {}
    for k, v in case.env.items():
        saved[k] = os.environ.get(k)
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = T._fill(v, root)
    base = [f"runs_dir={root / 'runs'}", f"data_root={root / 'data'}"] if case.command != "evaluate" else [f"runs_dir={root / 'runs'}"]
    before = T.snapshot(root)
    out, err = io.StringIO(), io.StringIO()
    verdict = ""
    try:
        cfg = compose_cfg(case.command, [*base, *(T._fill(o, root) for o in case.overrides)])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_task(T._task(case.command), cfg)
        verdict = "no_error"
    except SystemExit as e:
        verdict = "clean" if e.code == 2 else "other_exit"
        msg = (err.getvalue().strip().splitlines() or [""])[-1]
    except BaseException as e:
        verdict = "traceback"
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v
    changed = T.snapshot(root) != before
    stats[verdict] += 1
    stats["files_changed"] += changed
    print(f"{verdict:10s} {'CHANGED ' if changed else ''}{name}: {msg[:300] if verdict != 'no_error' else ''}", flush=True)
print(len(T.CASES), "cases", stats)
os.chdir(tmp.parent)
shutil.rmtree(tmp, ignore_errors=True)
