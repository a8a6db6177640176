"""The HTML report escapes every string that comes from the tracker: anyone who can write a tag or a run name must
not be able to store script in the report."""
from __future__ import annotations

from helpers import SMOKE_SPACE

from sweep.config import load_sweep
from sweep.report.analyse import sweep_fidelity
from sweep.report.model import Sweep, Trial
from sweep.report.render import Images, build_html

HOSTILE = "<script>alert(1)</script>"


def test_hostile_tags_names_and_parameters_are_escaped():
    cfg = load_sweep(SMOKE_SPACE)
    trials = [
        Trial("t1", f"trial {HOSTILE}", HOSTILE, {"model.num_heads": HOSTILE, "train.lr": "0.001"}, {100: 50.0, 300: 20.0},
              {100: 1, 300: 2}, {"best_ema_rate": 0.99}, "run1", {"eval.sampler": HOSTILE}),
        Trial("t2", "b'><img src=x onerror=alert(2)>", "pruned", {}, {100: 60.0}, {100: 1}),
    ]
    sweep = Sweep("s", 300, trials, cfg.dimensions, parent_run_id=HOSTILE, parent_status=HOSTILE)
    page = build_html(sweep, sweep_fidelity(sweep), Images({300: b"png"}, 100, []))
    assert HOSTILE not in page and "<img src=x" not in page and "onerror=alert(2)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<tr class='best'>" in page and f"<tr class='{HOSTILE}'>" not in page
