import subprocess
import sys


def test_importing_tsdiff_and_the_sampler_is_cheap():
    code = (
        "import sys, tsdiff, tsdiff.sampling, tsdiff.diffusion, tsdiff.caching, tsdiff.runs\n"
        "heavy = [m for m in ('pytorch_lightning', 'lightning', 'wandb', 'kaggle', 'hydra') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at package import: {out.stdout}"
