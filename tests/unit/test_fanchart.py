"""The fan chart drawn from a forecast.json 'fan_chart' entry."""

from __future__ import annotations

import numpy as np
import pytest

from tsdiff.results import write_result
from tsdiff.viz.fanchart import plot_fan_chart


def _data(n=3, h=5):
    z = np.zeros((n, h))
    return {"history": np.ones((n, 4)).tolist(), "truth": (z + 0.5).tolist(), "median": z.tolist(),
            "bands": {str(lv): {"lo": (z - w).tolist(), "hi": (z + w).tolist()} for lv, w in ((50, 0.5), (80, 1), (95, 2))},
            "window_index": [0, 7, 14]}


@pytest.mark.slow  # matplotlib import and PNG encoding: ~1 s
def test_fan_chart_draws_one_panel_per_window_with_bands_and_truth(tmp_path):
    fig = plot_fan_chart(_data(), title="t")
    panels = [ax for ax in fig.axes if ax.has_data()]
    assert len(panels) == 3 and len(panels[0].collections) == 3  # three bands
    assert panels[1].get_title() == "test window 7"
    path = write_result(tmp_path / "fan.png", fig)
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="lacks"):
        plot_fan_chart({"truth": []})
