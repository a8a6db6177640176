"""The HTML report of a sweep: plotly figures and tables rendered from the report model and its analysis, one
self-contained page (plotly.js inlined once, works offline). Every string that comes from the tracker is escaped."""
from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go

from sweep.report.analyse import RungFidelity, best_vs_compute, importance_study, pruned_ahead_of_winner
from sweep.report.model import OUTCOMES, Sweep, Trial

LINE_DASH = {"completed": "solid", "pruned": "dot", "failed": "dash", "running": "longdash"}
TOP_K = 4
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;font-size:14px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0} tr.best{background:#e3f5e1;font-weight:bold} tr.pruned{color:#666} tr.failed{color:#a00}
.grids{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0} img{image-rendering:pixelated;width:200px;border:1px solid #ccc}
.warn{color:#a00} .answers li{margin:.4em 0}
"""


@dataclass
class Images:
    """Sample grids (PNG bytes by step) of the trials the page shows: the best one, and the top ones."""

    best: dict[int, bytes]
    top_step: int | None  # the latest rung every top trial reached
    top: list[tuple[Trial, bytes]]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"


def short(value: object) -> str:
    """A float parameter to 4 significant digits, anything else as it is."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.4g}"


def params_text(t: Trial, sweep: Sweep) -> str:
    return ", ".join(f"{d.path.rsplit('.', 1)[-1]}={short(t.params[d.path])}" for d in sweep.dimensions if d.path in t.params)


def no_retrain_parts(t: Trial) -> list[str]:
    """The trial's best EMA rate (EMA bank) and best sampling settings (sampling study), when it has them."""
    parts = [f"EMA rate: {t.ema_rate:g}"] if t.ema_rate is not None else []
    if t.sampling_best:
        settings = ", ".join(f"{k.removeprefix('eval.')}={short(v)}" for k, v in t.sampling_best.items())
        parts.append(f"sampling: {settings} (study FID {fmt(t.metrics.get('sampling_best_fid', math.nan))} vs "
                     f"{fmt(t.metrics.get('sampling_default_fid', math.nan))} with the configured sampler)")
    elif t.status == "completed":
        parts.append("sampling: no sampling study (declare eval.search in the sweep file to run one)")
    return parts


def fid_curves(sweep: Sweep) -> go.Figure:
    """FID vs step, one line per trial; pruned trials end early with an x (the ASHA picture)."""
    fig = go.Figure()
    best = sweep.best
    for t in sweep.trials:
        steps = sorted(t.fid)
        is_best = best is not None and t is best
        symbols = ["circle"] * len(steps)
        if t.status == "pruned" and symbols:
            symbols[-1] = "x"
        fig.add_trace(go.Scatter(
            x=steps, y=[t.fid[s] for s in steps], mode="lines+markers", name=esc(f"{t.name} ({t.status})"),
            line={"dash": LINE_DASH.get(t.status, "solid"), "width": 4 if is_best else 1.5},
            marker={"symbol": symbols, "size": 10 if is_best else 7},
            hovertemplate="step %{x}<br>FID %{y:.2f}<br>" + esc(params_text(t, sweep)) + "<extra>%{fullData.name}</extra>",
        ))
    fig.update_layout(title="FID vs training step per trial (dotted, ending in x: stopped by ASHA; thick: best trial)",
                      xaxis_title="training step", yaxis_title="FID (lower is better)", height=520, legend_title="trial")
    return fig


def compute_figure(sweep: Sweep) -> go.Figure:
    points = best_vs_compute(sweep)
    fig = go.Figure(go.Scatter(
        x=[p.steps_spent for p in points], y=[p.best_fid for p in points], mode="lines+markers", line={"shape": "hv"},
        text=[esc(f"{p.trial.name} step {p.step}: FID {p.trial.fid[p.step]:.2f}") for p in points],
        hovertemplate="%{x} steps spent<br>best FID %{y:.2f}<br>evaluation: %{text}<extra></extra>"))
    fig.update_layout(title="Best FID so far vs compute spent", xaxis_title="training steps spent, all trials together",
                      yaxis_title="best FID so far", height=420)
    return fig


def importance_figures(sweep: Sweep) -> tuple[int | None, list[go.Figure], str]:
    """Parameter importance and parallel coordinates at the first rung (the one every trial reaches)."""
    steps = sorted({s for t in sweep.trials for s in t.fid})
    if not steps:
        return None, [], "no trial has reported a FID yet"
    step = steps[0]
    study = importance_study(sweep, step)
    if len(study.trials) < 2:
        return step, [], f"parameter importance needs at least 2 trials with a FID at step {step}; {len(study.trials)} so far"
    figures, notes = [], []
    try:
        figures.append(optuna.visualization.plot_param_importances(study))
    except (ValueError, RuntimeError) as exc:
        notes.append(f"parameter importance unavailable: {exc}")
    figures.append(optuna.visualization.plot_parallel_coordinate(study))
    for fig in figures:
        fig.update_layout(height=480)
    return step, figures, "; ".join(notes)


def table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{esc(cls)}'>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
        for row, cls in zip(rows, row_classes or [""] * len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def trials_table(sweep: Sweep) -> str:
    ordered, best = sweep.ranked(), sweep.best
    rows = [[t.name, t.status, str(t.last_step), fmt(t.fid.get(t.last_step, math.inf)), fmt(t.best_fid),
             str(t.best_step if t.best_step is not None else "-"), *[short(t.params.get(d.path, "-")) for d in sweep.dimensions]]
            for t in ordered]
    classes = ["best" if t is best else (t.status if t.status in OUTCOMES else "") for t in ordered]
    return table(["trial", "status", "last step", "last FID", "best FID", "best at step", *[d.path for d in sweep.dimensions]], rows, classes)


def fidelity_section(sweep: Sweep, fidelity: list[RungFidelity]) -> str:
    winner = sweep.winner
    rows = [[str(r.step), str(r.n), r.label()] for r in fidelity]
    parts = [
        "<p>For each rung, Spearman's &rho; between the FID ranking at that rung and the final ranking (step "
        f"{sweep.max_steps}), among the trials that reached the end. &rho; near +1: the short runs ranked the trials as the "
        "full runs did, so pruning at that rung is safe; near 0 or negative: the early ranking says little about the final one.</p>",
        table(["rung (step)", "trials compared", "Spearman's ρ"], rows) if rows else "<p>No rung before the final step yet.</p>",
    ]
    flagged = pruned_ahead_of_winner(sweep)
    if winner is None:
        parts.append("<p>No trial has reached the final step yet, so there is no winner to compare the pruned trials with.</p>")
    elif flagged:
        items = "".join(f"<li>{esc(t.name)}: FID {f:.2f} at step {s}, the winner {esc(winner.name)} had {w:.2f}</li>"
                        for t, s, f, w in flagged)
        parts.append(f"<p class='warn'>Pruned trials that were <b>ahead of the eventual winner</b> at the rung where they were stopped "
                     f"(possible lost winners):</p><ul>{items}</ul>")
    else:
        parts.append(f"<p>No pruned trial was ahead of the eventual winner ({esc(winner.name)}) at the rung where it was stopped.</p>")
    return "\n".join(parts)


def figure(png: bytes, caption: str) -> str:
    return (f"<figure><img src='data:image/png;base64,{base64.b64encode(png).decode()}' alt='{esc(caption)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def answers(sweep: Sweep, fidelity: list[RungFidelity], step: int | None) -> str:
    best, fid_at_step = sweep.best, next((r for r in fidelity if r.step == step), None)
    items = [
        f"<li><b>Best trial:</b> {esc(best.name)} ({esc(best.status)}), best FID {best.best_fid:.2f} at step {best.best_step}; "
        f"{esc(params_text(best, sweep))}.</li>" if best else "<li><b>Best trial:</b> none has reported a FID yet.</li>",
        "<li><b>Which hyperparameters matter:</b> see <a href='#importance'>parameter importance</a> (FID at step "
        f"{step}, the first rung, which every trial reaches; its rank fidelity: {fid_at_step.label() if fid_at_step else 'n/a'}).</li>",
        "<li><b>Did early stopping throw away a winner?</b> "
        + (f"rank fidelity per rung: {', '.join(f'step {r.step}: {r.label()}' for r in fidelity)}; " if fidelity else "")
        + (f"{len(pruned_ahead_of_winner(sweep))} pruned trial(s) were ahead of the winner when stopped. " if sweep.winner else "no trial has finished yet. ")
        + "See <a href='#fidelity'>rank fidelity</a>.</li>",
    ]
    if best:
        found = "; ".join(no_retrain_parts(best)) or "nothing (the trial did not reach the final rung)"
        items.append(f"<li><b>Found without retraining:</b> {esc(found)}</li>")
    return "".join(items)


def samples_sections(sweep: Sweep, images: Images) -> str:
    best = sweep.best
    best_grids = "".join(figure(png, f"step {step}: FID {fmt(best.fid.get(step, math.inf))}") for step, png in images.best.items()) if best else ""
    top = "".join(figure(png, f"{t.name}: FID {fmt(t.fid.get(images.top_step, math.inf))}") for t, png in images.top)
    return (f"<h2 id='samples'>Best trial's samples across rungs</h2><p>{esc(best.name) + ': EMA model samples from the same fixed noise at every rung.' if best else 'No trial yet'}</p>"
            f"<div class='grids'>{best_grids}</div>"
            f"<h2 id='top'>The top {len(images.top)} trials side by side</h2>"
            + (f"<p>At step {images.top_step}, the latest rung they all reached, from the same initial noises.</p><div class='grids'>{top}</div>"
               if images.top else "<p>No rung shared by the top trials yet.</p>"))


def build_html(sweep: Sweep, fidelity: list[RungFidelity], images: Images) -> str:
    """The whole report as one HTML page."""
    from plotly.offline import get_plotlyjs

    def plot(fig: go.Figure) -> str:
        return fig.to_html(full_html=False, include_plotlyjs=False)

    step, opt_figs, opt_note = importance_figures(sweep)
    fid_at_step = next((r for r in fidelity if r.step == step), None)
    counts = ", ".join(f"{sweep.count(s)} {s}" for s in OUTCOMES)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sweep report: {esc(sweep.name)}</title>
<style>{STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>Sweep report: {esc(sweep.name)}</h1>
<p>MLflow parent run {esc(sweep.parent_run_id)} ({esc(sweep.parent_status)}); {len(sweep.trials)} trials: {counts};
final step {sweep.max_steps}. Generated {generated}.</p>
<h2>Answers</h2><ul class="answers">{answers(sweep, fidelity, step)}</ul>
<h2 id="curves">FID vs training step</h2>{plot(fid_curves(sweep))}
<h2 id="compute">Best FID vs compute</h2>{plot(compute_figure(sweep))}
<h2 id="importance">Which hyperparameters matter</h2>
<p>Optuna's parameter importance (fANOVA) and parallel coordinates over the trials' FID at step {step}, the first rung,
which every trial reaches. How well that rung's ranking predicts the final one (Spearman's &rho;):
{fid_at_step.label() if fid_at_step else 'n/a'}.</p>
{''.join(plot(f) for f in opt_figs)}{f"<p class='warn'>{esc(opt_note)}</p>" if opt_note else ''}
<h2 id="fidelity">Rank fidelity: did early stopping throw away a winner?</h2>{fidelity_section(sweep, fidelity)}
{samples_sections(sweep, images)}
<h2 id="trials">Trials</h2>{trials_table(sweep)}
</body></html>
"""


def top_trials(sweep: Sweep, k: int = TOP_K) -> tuple[int | None, list[Trial]]:
    """The ``k`` best trials and the latest rung they all reached (their grids there share the same noises)."""
    top = [t for t in sweep.ranked() if t.fid][:k]
    shared = set.intersection(*(set(t.fid) for t in top)) if top else set()
    return (max(shared), top) if shared else (None, [])
