"""``python -m sweep.report NAME``: a self-contained HTML report of a finished or running sweep, built
from its MLflow runs, written next to the Ray results and attached to the sweep's parent run.

It answers: which trial is best (table, sample grids), which hyperparameters matter (Optuna's parameter
importance and parallel coordinates), and did early stopping throw away a winner (FID curves per trial,
rank fidelity per rung, pruned trials that were ahead of the winner when they were stopped).
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep.config import Dimension, SweepConfig
from sweep.rank_fidelity import RungFidelity, rank_fidelity
from sweep.space import categorical_label
from sweep.tracking import STATUS_TAG, SWEEP_TAG, TRIAL_TAG, load_resolved_sweep, resolve_tracking_uri, retrying

REPORT_FILE = "sweep_report.html"
QUIET_DOWNLOADS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
RHO_METRIC = "rank_fidelity_rho"
LINE_DASH = {"completed": "solid", "pruned": "dot", "failed": "dash", "running": "longdash"}


class ReportError(RuntimeError):
    """The report cannot be built; the message says why."""


@dataclass
class TrialData:
    """One trial as its MLflow child run records it."""

    run_id: str
    name: str
    trial_id: str
    status: str  # completed / pruned / failed / running
    params: dict[str, str]
    fid: dict[int, float] = field(default_factory=dict)
    fid_time: dict[int, int] = field(default_factory=dict)  # step -> ms timestamp of the evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric
    sampling_best: str | None = None  # JSON settings of the final-rung sampling study's best configuration

    @property
    def last_step(self) -> int:
        return max(self.fid, default=0)

    @property
    def best_fid(self) -> float:
        return min(self.fid.values(), default=math.inf)

    @property
    def best_step(self) -> int | None:
        return min(self.fid, key=self.fid.__getitem__) if self.fid else None


@dataclass
class SweepData:
    name: str
    parent_run_id: str
    parent_status: str
    cfg: SweepConfig
    max_steps: int
    trials: list[TrialData]

    @property
    def best(self) -> TrialData | None:
        scored = [t for t in self.trials if math.isfinite(t.best_fid)]
        return min(scored, key=lambda t: t.best_fid) if scored else None

    @property
    def winner(self) -> TrialData | None:
        """The best of the trials that ran to the end (by final FID)."""
        done = [t for t in self.trials if self.max_steps in t.fid]
        return min(done, key=lambda t: t.fid[self.max_steps]) if done else None


def find_parent(client: MlflowClient, experiment: str, name: str) -> Any:
    """The latest parent run of sweep ``name`` in ``experiment``."""
    exp = retrying(lambda: client.get_experiment_by_name(experiment))
    if exp is None:
        raise ReportError(f"no sweep {name!r}: no MLflow experiment {experiment!r} in {client.tracking_uri} (pass --experiment or --tracking-uri)")
    runs = retrying(lambda: client.search_runs(
        [exp.experiment_id], f"tags.`{SWEEP_TAG}` = '{name}' and tags.`mlflow.parentRunId` IS NULL",
        order_by=["attributes.start_time DESC"], max_results=1))
    if not runs:
        raise ReportError(f"no sweep {name!r} in experiment {experiment!r} of {client.tracking_uri}")
    return runs[0]


def collect(client: MlflowClient, experiment: str, name: str, cfg: SweepConfig | None = None, parent_run_id: str | None = None) -> SweepData:
    """Parent run (``parent_run_id``, else the sweep's latest), search space and every child run's FID history."""
    parent = retrying(lambda: client.get_run(parent_run_id)) if parent_run_id else find_parent(client, experiment, name)
    cfg = cfg or load_resolved_sweep(client, parent.info.run_id)
    children = retrying(lambda: client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=10_000))
    trials = []
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        trial = TrialData(run.info.run_id, tags.get("mlflow.runName", run.info.run_id[:8]), tags.get(TRIAL_TAG, ""),
                          tags.get(STATUS_TAG, "running"), dict(run.data.params), metrics=dict(run.data.metrics),
                          sampling_best=tags.get("sampling_best"))
        for m in retrying(lambda rid=run.info.run_id: client.get_metric_history(rid, "fid")):
            trial.fid[int(m.step)], trial.fid_time[int(m.step)] = float(m.value), int(m.timestamp)
        trials.append(trial)
    return SweepData(name, parent.info.run_id, parent.info.status, cfg, cfg.run_config({}).train.max_steps, trials)


def fid_curves(data: SweepData) -> go.Figure:
    """FID vs step, one line per trial; pruned trials end early with an x (the ASHA picture)."""
    fig = go.Figure()
    best = data.best
    for t in data.trials:
        steps = sorted(t.fid)
        is_best = best is not None and t.run_id == best.run_id
        symbols = ["circle"] * len(steps)
        if t.status == "pruned" and symbols:
            symbols[-1] = "x"
        fig.add_trace(go.Scatter(
            x=steps, y=[t.fid[s] for s in steps], mode="lines+markers", name=f"{t.name} ({t.status})",
            line={"dash": LINE_DASH.get(t.status, "solid"), "width": 4 if is_best else 1.5},
            marker={"symbol": symbols, "size": 10 if is_best else 7},
            hovertemplate="step %{x}<br>FID %{y:.2f}<br>" + html.escape(_params_text(t, data.cfg.dimensions)) + "<extra>%{fullData.name}</extra>",
        ))
    fig.update_layout(title="FID vs training step per trial (dotted, ending in x: stopped by ASHA; thick: best trial)",
                      xaxis_title="training step", yaxis_title="FID (lower is better)", height=520, legend_title="trial")
    return fig


def best_vs_compute(data: SweepData) -> go.Figure:
    """Best FID so far vs cumulative training steps of all trials, evaluations in the order they finished."""
    events = sorted((t.fid_time[s], s, t) for t in data.trials for s in t.fid)
    spent, best, last_step = 0, math.inf, {}
    xs, ys, labels = [], [], []
    for _, step, trial in events:
        spent += step - last_step.get(trial.run_id, 0)
        last_step[trial.run_id] = step
        if trial.fid[step] < best:
            best = trial.fid[step]
        xs.append(spent)
        ys.append(best)
        labels.append(f"{trial.name} step {step}: FID {trial.fid[step]:.2f}")
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"shape": "hv"}, text=labels,
                               hovertemplate="%{x} steps spent<br>best FID %{y:.2f}<br>evaluation: %{text}<extra></extra>"))
    fig.update_layout(title="Best FID so far vs compute spent", xaxis_title="training steps spent, all trials together",
                      yaxis_title="best FID so far", height=420)
    return fig


def _distribution(dim: Dimension) -> optuna.distributions.BaseDistribution:
    if dim.kind == "choice":
        return optuna.distributions.CategoricalDistribution([categorical_label(c) for c in dim.choices or []])
    if dim.kind == "int":
        return optuna.distributions.IntDistribution(int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return optuna.distributions.FloatDistribution(dim.low, dim.high, step=dim.step, log=dim.log)


def _param_value(dim: Dimension, text: str) -> Any:
    """MLflow stores ``str(value)``; map it back to the value Optuna's distribution holds."""
    if dim.kind == "choice":
        for choice in dim.choices or []:
            if str(choice) == text:
                return categorical_label(choice)
        raise ValueError(f"{text!r} is not one of {dim.choices}")
    return int(float(text)) if dim.kind == "int" else float(text)


def optuna_study(data: SweepData, step: int) -> optuna.Study:
    """An Optuna study of the trials' FIDs at ``step``, with the sweep's own search distributions."""
    study = optuna.create_study(direction="minimize")
    for t in data.trials:
        if step not in t.fid:
            continue
        params, dists = {}, {}
        for dim in data.cfg.dimensions:
            if dim.path in t.params:
                params[dim.path], dists[dim.path] = _param_value(dim, t.params[dim.path]), _distribution(dim)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.fid[step],
                                                  user_attrs={"trial": t.name, "status": t.status}))
    return study


def optuna_figures(data: SweepData) -> tuple[int | None, list[go.Figure], str]:
    """Parameter importance and parallel coordinates at the first rung (the one every trial reaches)."""
    steps = sorted({s for t in data.trials for s in t.fid})
    if not steps:
        return None, [], "no trial has reported a FID yet"
    step = steps[0]
    study = optuna_study(data, step)
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


def pruned_ahead_of_winner(data: SweepData) -> list[tuple[TrialData, int, float, float]]:
    """Pruned trials whose FID at their last rung was better than the eventual winner's at that rung."""
    winner = data.winner
    if winner is None:
        return []
    out = []
    for t in data.trials:
        step = t.last_step
        if t.status == "pruned" and step in winner.fid and t.fid[step] < winner.fid[step]:
            out.append((t, step, t.fid[step], winner.fid[step]))
    return out


def _short(text: str) -> str:
    """A float parameter to 4 significant digits, anything else as MLflow stored it."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() else f"{value:.4g}"


def _params_text(t: TrialData, dims: list[Dimension]) -> str:
    return ", ".join(f"{d.path.rsplit('.', 1)[-1]}={_short(t.params[d.path])}" for d in dims if d.path in t.params)


def _fmt(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"


def _sample_grids(client: MlflowClient, trial: TrialData) -> list[tuple[str, str]]:
    """The trial's ``samples/*.png`` as (caption, base64 PNG), in step order."""
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for artifact in sorted(retrying(lambda: client.list_artifacts(trial.run_id, "samples")), key=lambda a: a.path):
            if not artifact.path.endswith(".png"):
                continue
            local = client.download_artifacts(trial.run_id, artifact.path, folder)
            step = int(Path(artifact.path).stem.rsplit("_", 1)[-1])
            caption = f"step {step}: FID {_fmt(trial.fid.get(step, math.inf))}"
            out.append((caption, base64.b64encode(Path(local).read_bytes()).decode()))
    return out


def _table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{cls}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row, cls in zip(rows, row_classes or [""] * len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def trials_table(data: SweepData) -> str:
    dims = data.cfg.dimensions
    ordered = sorted(data.trials, key=lambda t: (t.best_fid, t.name))
    best = data.best
    rows = [[t.name, t.status, str(t.last_step), _fmt(t.fid.get(t.last_step, math.inf)), _fmt(t.best_fid),
             str(t.best_step if t.best_step is not None else "-"), *[_short(t.params.get(d.path, "-")) for d in dims]] for t in ordered]
    classes = ["best" if best and t.run_id == best.run_id else t.status for t in ordered]
    return _table(["trial", "status", "last step", "last FID", "best FID", "best at step", *[d.path for d in dims]], rows, classes)


def fidelity_section(data: SweepData, fidelity: list[RungFidelity]) -> str:
    winner = data.winner
    rows = [[str(r.step), str(r.n), r.label()] for r in fidelity]
    parts = [
        "<p>For each rung, Spearman's &rho; between the FID ranking at that rung and the final ranking (step "
        f"{data.max_steps}), among the trials that reached the end. &rho; near +1: the short runs ranked the trials as the "
        "full runs did, so pruning at that rung is safe; near 0 or negative: the early ranking says little about the final one.</p>",
        _table(["rung (step)", "trials compared", "Spearman's ρ"], rows) if rows else "<p>No rung before the final step yet.</p>",
    ]
    flagged = pruned_ahead_of_winner(data)
    if winner is None:
        parts.append("<p>No trial has reached the final step yet, so there is no winner to compare the pruned trials with.</p>")
    elif flagged:
        items = "".join(f"<li>{html.escape(t.name)}: FID {f:.2f} at step {s}, the winner {html.escape(winner.name)} had {w:.2f}</li>"
                        for t, s, f, w in flagged)
        parts.append(f"<p class='warn'>Pruned trials that were <b>ahead of the eventual winner</b> at the rung where they were stopped "
                     f"(possible lost winners):</p><ul>{items}</ul>")
    else:
        parts.append(f"<p>No pruned trial was ahead of the eventual winner ({html.escape(winner.name)}) at the rung where it was stopped.</p>")
    return "\n".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;font-size:14px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0} tr.best{background:#e3f5e1;font-weight:bold} tr.pruned{color:#666} tr.failed{color:#a00}
.grids{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0} img{image-rendering:pixelated;width:200px;border:1px solid #ccc}
.warn{color:#a00} .answers li{margin:.4em 0}
"""


def no_retrain_text(trial: TrialData) -> str:
    """The best trial's EMA rate (EMA bank) and best sampling settings (sampling study), when it has them."""
    parts = []
    if "ema_rate" in trial.metrics:
        parts.append(f"EMA rate {trial.metrics['ema_rate']:g}")
    if trial.sampling_best:
        settings = ", ".join(f"{k.removeprefix('eval.')}={_fmt(v) if isinstance(v, float) else v}"
                             for k, v in json.loads(trial.sampling_best).items())
        parts.append(f"sampling {settings} (study FID {trial.metrics.get('sampling_best_fid', math.nan):.2f} vs "
                     f"{trial.metrics.get('sampling_default_fid', math.nan):.2f} with the configured sampler)")
    elif trial.status == "completed":
        parts.append("no sampling study (declare eval.search to run one)")
    return "; ".join(parts) or "nothing (the trial did not reach the final rung)"


def build_html(client: MlflowClient, data: SweepData, fidelity: list[RungFidelity]) -> str:
    """The whole report as one HTML page with plotly.js inlined once (works offline)."""
    from plotly.offline import get_plotlyjs

    def plot(fig: go.Figure) -> str:
        return fig.to_html(full_html=False, include_plotlyjs=False)

    best, winner = data.best, data.winner
    counts = {s: sum(t.status == s for t in data.trials) for s in ("completed", "pruned", "failed", "running")}
    step, opt_figs, opt_note = optuna_figures(data)
    fid_at_step = next((r for r in fidelity if r.step == step), None)
    answers = [
        f"<li><b>Best trial:</b> {html.escape(best.name)} ({best.status}), best FID {best.best_fid:.2f} at step {best.best_step}; "
        f"{html.escape(_params_text(best, data.cfg.dimensions))}.</li>" if best else "<li><b>Best trial:</b> none has reported a FID yet.</li>",
        "<li><b>Which hyperparameters matter:</b> see <a href='#importance'>parameter importance</a> (FID at step "
        f"{step}, the first rung, which every trial reaches; its rank fidelity: {fid_at_step.label() if fid_at_step else 'n/a'}).</li>",
        "<li><b>Did early stopping throw away a winner?</b> "
        + (f"rank fidelity per rung: {', '.join(f'step {r.step}: {r.label()}' for r in fidelity)}; " if fidelity else "")
        + (f"{len(pruned_ahead_of_winner(data))} pruned trial(s) were ahead of the winner when stopped. " if winner else "no trial has finished yet. ")
        + "See <a href='#fidelity'>rank fidelity</a>.</li>",
    ]
    if best:
        answers.append(f"<li><b>Found without retraining:</b> {html.escape(no_retrain_text(best))}</li>")
    grids = _sample_grids(client, best) if best else []
    grid_html = "".join(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption></figure>"
                        for c, b64 in grids)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sweep report: {html.escape(data.name)}</title>
<style>{STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>Sweep report: {html.escape(data.name)}</h1>
<p>MLflow parent run {data.parent_run_id} ({data.parent_status}); {len(data.trials)} trials: {counts['completed']} completed,
{counts['pruned']} pruned by ASHA, {counts['failed']} failed, {counts['running']} running; final step {data.max_steps}.
Generated {generated}.</p>
<h2>Answers</h2><ul class="answers">{''.join(answers)}</ul>
<h2 id="curves">FID vs training step</h2>{plot(fid_curves(data))}
<h2 id="compute">Best FID vs compute</h2>{plot(best_vs_compute(data))}
<h2 id="importance">Which hyperparameters matter</h2>
<p>Optuna's parameter importance (fANOVA) and parallel coordinates over the trials' FID at step {step}, the first rung,
which every trial reaches. How well that rung's ranking predicts the final one (Spearman's &rho;):
{fid_at_step.label() if fid_at_step else 'n/a'}.</p>
{''.join(plot(f) for f in opt_figs)}{f"<p class='warn'>{html.escape(opt_note)}</p>" if opt_note else ''}
<h2 id="fidelity">Rank fidelity: did early stopping throw away a winner?</h2>{fidelity_section(data, fidelity)}
<h2 id="samples">Best trial's samples across rungs</h2>
<p>{html.escape(best.name) if best else 'No trial yet'}{': EMA model samples from the same fixed noise at every rung.' if best else ''}</p>
<div class="grids">{grid_html}</div>
<h2 id="trials">Trials</h2>{trials_table(data)}
</body></html>
"""


def default_output(storage_path: str, name: str) -> Path:
    """``<storage>/<name>/sweep_report.html`` beside the Ray results; the working folder for remote storage."""
    if "://" in storage_path:
        return Path.cwd() / f"{name}_{REPORT_FILE}"
    return Path(storage_path).expanduser().resolve() / name / REPORT_FILE


def publish(client: MlflowClient, data: SweepData, out: Path) -> tuple[Path, list[RungFidelity]]:
    """Write the report to ``out``, attach it to the parent run, log rank fidelity as parent-run metrics
    (a point already logged is not logged again, so rerunning the report leaves the history as it was)."""
    fidelity = rank_fidelity({t.run_id: t.fid for t in data.trials}, data.max_steps)
    page = build_html(client, data, fidelity)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    retrying(lambda: client.log_text(data.parent_run_id, page, REPORT_FILE))
    now = int(time.time() * 1000)
    logged = {(m.step, m.value) for m in retrying(lambda: client.get_metric_history(data.parent_run_id, RHO_METRIC))}
    metrics = [Metric(RHO_METRIC, r.rho, now, r.step) for r in fidelity if r.rho is not None and (r.step, r.rho) not in logged]
    if metrics:
        retrying(lambda: client.log_batch(data.parent_run_id, metrics=metrics))
    return out, fidelity


def report_after_sweep(tracking_uri: str, cfg: SweepConfig, experiment_path: str, parent_run_id: str) -> None:
    """Called at the end of ``run_sweep``: build and publish the report; a failure only warns."""
    os.environ.update(QUIET_DOWNLOADS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        client = MlflowClient(tracking_uri)
        out = Path.cwd() / f"{cfg.name}_{REPORT_FILE}" if "://" in experiment_path else Path(experiment_path) / REPORT_FILE
        path, _ = publish(client, collect(client, cfg.experiment, cfg.name, cfg, parent_run_id), out)
        print(f"Report: {path}")
    except Exception as exc:  # the sweep's results are safe in MLflow; the report can be rebuilt with sweep.report
        print(f"warning: sweep report not built ({type(exc).__name__}: {exc}); retry with `python -m sweep.report {cfg.name}`", file=sys.stderr)


def check_store(uri: str) -> None:
    """Fail fast on a missing SQLite file (MlflowClient would create it) or an unreachable server (it would retry for minutes)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportError(f"no MLflow store at {uri}; pass --tracking-uri")
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).close()
        except (urllib.error.URLError, OSError) as exc:
            raise ReportError(f"MLflow server {uri} is unreachable ({getattr(exc, 'reason', exc)}); pass --tracking-uri") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("name", help="the sweep's name (the YAML file's `name`)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep's name)")
    p.add_argument("--storage-path", help="Ray results folder (default: the sweep's sweep.storage_path)")
    p.add_argument("--out", type=Path, help=f"output HTML file (default: <storage-path>/NAME/{REPORT_FILE})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    os.environ.update(QUIET_DOWNLOADS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        check_store(uri)
        client = MlflowClient(uri)
        data = collect(client, args.experiment or args.name, args.name)
        out = args.out or default_output(args.storage_path or data.cfg.sweep.storage_path, args.name)
        path, fidelity = publish(client, data, out)
    except (ReportError, MlflowException) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"Report of sweep {args.name!r} ({len(data.trials)} trials): {path}")
    for r in fidelity:
        print(f"  rank fidelity at step {r.step}: {r.label()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
