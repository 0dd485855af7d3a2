"""`report.html`: one self-contained page per run, written at the end of every run and by
`finetune report RUN` for any run folder, finished or not.

It opens from disk with no server and no network: the plots are matplotlib PNGs embedded as data
URIs (copies beside it in `plots/`, for e-mails and issues), the styles are inline, and there is
no script. It holds the trials table, every trial's learning curve with where each stopped, the
best trial's training and validation curves, the metric against each searched parameter,
parameter importance, the best model's test metrics with its confusion matrix or residuals, the
data fingerprint and the versions.

Parameter importance is fANOVA (Hutter, Hoos and Leyton-Brown, ICML 2014) as Optuna implements it
(`optuna.importance.FanovaImportanceEvaluator`): it fits a random forest to (configuration, best
metric) and splits the variance of its prediction among the parameters. It is the measure
hyperparameter-search tools report, it handles log-scaled, integer and categorical domains as the
search space defines them, and Optuna is a maintained library; a permutation importance would
need the same forest and says less about interactions.

Everything here reads files (finetune.run_folders); nothing imports TensorFlow or starts Ray.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass

from finetune import storage
from finetune.reports import format_config, short_trial_name
from finetune.run_folders import RunRecord, format_seconds, read_run

REPORT_FILE = "report.html"
PLOTS_FOLDER = "plots"
STATUS_COLOURS = {"completed": "#2a7", "stopped_early": "#c80", "failed": "#c33", "unfinished": "#58a"}


@dataclass
class Plot:
    name: str  # file name in plots/, without .png
    title: str
    png: bytes


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.html and <run_dir>/plots/*.png; return the report's location."""
    record = read_run(run_dir)
    plots, notes = make_plots(record)
    for plot in plots:
        storage.write_bytes(storage.join(record.run_dir, PLOTS_FOLDER, f"{plot.name}.png"), plot.png)
    location = storage.join(record.run_dir, REPORT_FILE)
    storage.write_bytes(location, render_html(record, plots, notes).encode())
    return location


# --- the plots ------------------------------------------------------------------------------------


def make_plots(record: RunRecord) -> tuple[list[Plot], dict[str, str]]:
    """The plots a run's data allows, and for each one it does not, why (shown in its place)."""
    import matplotlib

    matplotlib.use("Agg")
    plots, notes = [], {}
    for name, draw in (("curves", _curves), ("best_trial", _best_trial), ("parameters", _parameters),
                       ("importance", _importance), ("test", _test)):
        result = draw(record)
        if isinstance(result, str):
            notes[name] = result
        else:
            plots.append(result)
    return plots, notes


def _figure(width: float = 8, height: float = 4.5):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    return figure, axes


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _rows_of(record: RunRecord, trial_id: str) -> list[dict]:
    return sorted((r for r in record.rows if r["trial_id"] == trial_id), key=lambda r: r["epoch"])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _curves(record: RunRecord) -> Plot | str:
    metric = record.metric
    trials = [t for t in record.trials if any(_finite(r.get(metric)) for r in _rows_of(record, t["trial_id"]))]
    if not trials:
        return f"No trial reported {metric}, so there are no learning curves."
    figure, axes = _figure()
    best_id = (record.summary or {}).get("best_trial_id")
    for trial in trials:
        rows = [r for r in _rows_of(record, trial["trial_id"]) if _finite(r.get(metric))]
        epochs, values = [r["epoch"] for r in rows], [r[metric] for r in rows]
        best = trial["trial_id"] == best_id
        line, = axes.plot(epochs, values, linewidth=2.5 if best else 1, alpha=1 if best else 0.7,
                          label=f"trial {short_trial_name(trial['trial_id'])}" + (" (best)" if best else ""))
        marker = {"stopped_early": "x", "failed": "X", "completed": "o"}.get(trial["status"], ">")
        axes.plot(epochs[-1:], values[-1:], marker=marker, markersize=9, color=line.get_color(),
                  markeredgecolor=STATUS_COLOURS.get(trial["status"], "#333"), markeredgewidth=2)
    for rung in _rungs(record):
        axes.axvline(rung, color="#999", linestyle=":", linewidth=1)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} of every trial")
    if len(trials) <= 12:
        axes.legend(fontsize=8, ncol=2)
    axes.grid(alpha=0.3)
    return Plot("curves", "Learning curves", _png(figure))


def _rungs(record: RunRecord) -> list[int]:
    from finetune.errors import UserError
    from finetune.job import validate_job_dict
    from finetune.plan import scheduler_rungs

    try:
        job = validate_job_dict(record.job or {}, source="job.yaml")
    except UserError:
        return []
    epochs = job.train.epochs
    return sorted({math.ceil(m) for bracket in scheduler_rungs(job) for m in bracket if math.ceil(m) < epochs})


def _best_trial(record: RunRecord) -> Plot | str:
    best_id = (record.summary or {}).get("best_trial_id") or _best_so_far(record)
    if best_id is None:
        return "No trial has a best epoch, so there is no best trial to plot."
    rows = _rows_of(record, best_id)
    metric = record.metric.removeprefix("val_")
    pairs = [("loss", "val_loss")] + ([(metric, f"val_{metric}")] if metric != "loss" else [])
    import matplotlib.pyplot as plt

    figure, all_axes = plt.subplots(1, len(pairs), figsize=(8, 3.6), dpi=100, squeeze=False)
    for axes, (train, validation) in zip(all_axes[0], pairs):
        for name, style in ((train, "-"), (validation, "--")):
            points = [(r["epoch"], r[name]) for r in rows if _finite(r.get(name))]
            if points:
                axes.plot(*zip(*points), style, marker=".", label=name)
        axes.set_xlabel("epoch")
        axes.set_title(train)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"best trial {short_trial_name(best_id)}: training and validation")
    return Plot("best_trial", "The best trial", _png(figure))


def _best_so_far(record: RunRecord) -> str | None:
    scored = [t for t in record.trials if t.get("best_metric") is not None and t["status"] != "failed"]
    if not scored:
        return None
    return (max if record.mode == "max" else min)(scored, key=lambda t: t["best_metric"])["trial_id"]


def _searched(record: RunRecord) -> dict[str, object]:
    """Searched path -> its Domain (fixed entries left out)."""
    from finetune.search_space import parse_space

    space = ((record.job or {}).get("search") or {}).get("space") or {}
    try:
        return {path: d for path, d in parse_space(space).items() if d.kind != "fixed"}
    except ValueError:
        return {}


def _scored(record: RunRecord) -> list[dict]:
    return [t for t in record.trials if _finite(t.get("best_metric")) and t["status"] != "failed"]


def _parameters(record: RunRecord) -> Plot | str:
    searched, scored = _searched(record), _scored(record)
    if not searched:
        return "The search space has no sampled entries: every trial trained the same configuration."
    if not scored:
        return f"No trial has a {record.metric} to plot against its parameters."
    import matplotlib.pyplot as plt

    count = len(searched)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), dpi=100, squeeze=False)
    for axes in grid.flat[count:]:
        axes.set_visible(False)
    for axes, (path, domain) in zip(grid.flat, searched.items()):
        points = [(t["config"].get(path), t["best_metric"]) for t in scored if t["config"].get(path) is not None]
        if domain.kind in ("choice", "grid") or not all(_finite(x) for x, _ in points):
            labels = [json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in
                      (domain.args[0] if domain.kind in ("choice", "grid") else sorted({str(x) for x, _ in points}))]
            index = {label: i for i, label in enumerate(labels)}
            xs = [index.get(json.dumps(x) if isinstance(x, (list, dict)) else str(x), -1) for x, _ in points]
            axes.scatter(xs, [y for _, y in points], alpha=0.8)
            axes.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20)
        else:
            axes.scatter([x for x, _ in points], [y for _, y in points], alpha=0.8)
            if domain.kind == "loguniform":
                axes.set_xscale("log")
        axes.set_title(path, fontsize=9)
        axes.set_ylabel(f"best {record.metric}", fontsize=8)
        axes.grid(alpha=0.3)
    return Plot("parameters", f"Best {record.metric} against each searched parameter", _png(figure))


def parameter_importance(record: RunRecord) -> dict[str, float] | str:
    """fANOVA importance of each searched parameter for the trials' best metric (Optuna), or why
    it cannot be computed."""
    searched, scored = _searched(record), _scored(record)
    varied = {path: d for path, d in searched.items() if all(t["config"].get(path) is not None for t in scored)}
    if len(scored) < 2 or not varied:
        return ("Parameter importance needs at least two trials with a metric and a parameter every one of them "
                f"sampled ({len(scored)} trial(s) with a metric, {len(varied)} such parameter(s)).")
    values = [t["best_metric"] for t in scored]
    if max(values) - min(values) < 1e-12:
        return f"Every trial reached the same {record.metric}, so no parameter explains a difference."
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {}
    for path, domain in varied.items():
        if domain.kind in ("choice", "grid"):
            distributions[path] = CategoricalDistribution([_category(v) for v in domain.args[0]])
        elif domain.kind == "randint":
            distributions[path] = IntDistribution(int(domain.args[0]), int(domain.args[1]))
        else:
            distributions[path] = FloatDistribution(float(domain.args[0]), float(domain.args[1]),
                                                    log=domain.kind == "loguniform")
    study = optuna.create_study(direction="maximize" if record.mode == "max" else "minimize")
    for trial in scored:
        params = {}
        for path, distribution in distributions.items():
            value = trial["config"][path]
            params[path] = _category(value) if isinstance(distribution, CategoricalDistribution) else value
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=trial["best_metric"]))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def _category(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _importance(record: RunRecord) -> Plot | str:
    importance = parameter_importance(record)
    if isinstance(importance, str):
        return importance
    figure, axes = _figure(8, max(2.6, 0.6 + 0.5 * len(importance)))
    names = list(importance)[::-1]
    axes.barh(names, [importance[n] for n in names], color="#47a")
    axes.set_xlabel(f"share of the variance of best {record.metric} (fANOVA)")
    axes.set_xlim(0, 1)
    axes.grid(alpha=0.3, axis="x")
    return Plot("importance", "Parameter importance (fANOVA)", _png(figure))


def _test(record: RunRecord) -> Plot | str:
    evaluation = record.evaluation
    if not evaluation:
        return "There is no test evaluation: no trial produced a model, the run has not finished, or the job has no test split."
    if evaluation["kind"] == "confusion_matrix":
        counts = evaluation["counts"]
        classes = record.classes or [str(i) for i in range(len(counts))]
        size = max(4.0, 0.45 * len(classes) + 2)
        figure, axes = _figure(size, size * 0.85)
        image = axes.imshow(counts, cmap="Blues")
        figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0)
        axes.set_yticks(range(len(classes)), classes)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        top = max(max(row) for row in counts) or 1
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                if count:
                    axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                              color="white" if count > top / 2 else "black")
        axes.set_title("confusion matrix of the best model on the test split")
        return Plot("test", "Confusion matrix (test split)", _png(figure))
    import matplotlib.pyplot as plt

    true, predicted = evaluation["true"], evaluation["predicted"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4), dpi=100)
    left.scatter(true, predicted, s=10, alpha=0.6)
    low, high = min(true + predicted), max(true + predicted)
    left.plot([low, high], [low, high], color="#c33", linewidth=1)
    left.set_xlabel("true")
    left.set_ylabel("predicted")
    left.set_title("predicted against true")
    right.scatter(predicted, [p - t for p, t in zip(predicted, true)], s=10, alpha=0.6)
    right.axhline(0, color="#c33", linewidth=1)
    right.set_xlabel("predicted")
    right.set_ylabel("residual (predicted - true)")
    right.set_title("residuals")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.suptitle(f"best model on the test split ({evaluation.get('rows', len(true))} rows)")
    return Plot("test", "Residuals (test split)", _png(figure))


# --- the page -------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600}.note{color:#666;font-style:italic}.meta{color:#555;font-size:13px}
img{max-width:100%;height:auto;border:1px solid #eee}.best{background:#f2fbf5}
.pill{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px}
code{font-size:12px;background:#f6f6f6;padding:1px 4px;border-radius:3px;word-break:break-all}
"""


def render_html(record: RunRecord, plots: list[Plot], notes: dict[str, str]) -> str:
    e = html.escape
    summary = record.summary or {}
    by_name = {p.name: p for p in plots}
    best_id = summary.get("best_trial_id") or _best_so_far(record)
    state_colour = {"finished": "#2a7", "failed": "#c33", "running": "#58a", "interrupted": "#c80"}.get(record.state, "#777")
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        # No network: nothing but what this file holds (inline styles, data: images).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{e(record.name)} {e(record.run_id)}: finetune report</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(record.name)} <span class=\"meta\">run {e(record.run_id)}</span></h1>",
        f"<p><span class=\"pill\" style=\"background:{state_colour}\">{e(record.state)}</span> "
        f"<span class=\"meta\">{len(record.trials)} trials, wall time {e(format_seconds(record.wall_seconds))}, "
        f"metric {e(record.metric)} ({e(record.mode)}); folder <code>{e(record.run_dir)}</code></span></p>",
    ]
    if record.summary is None:
        parts.append(f"<p class=\"note\">This run has no summary yet ({e(record.state)}): the trials below are read "
                     "from what Tune wrote so far.</p>")
    parts.append(_headline(record, summary, best_id))
    parts += ["<h2>Trials</h2>", _trials_table(record, best_id)]
    for name, heading in (("curves", "Learning curves"), ("best_trial", "The best trial"),
                          ("parameters", "Metric against each searched parameter"),
                          ("importance", "Parameter importance"), ("test", "The best model on the test split")):
        parts.append(f"<h2>{heading}</h2>")
        if name == "test" and summary.get("test_metrics"):
            parts.append("<p>" + ", ".join(f"{e(k)} <b>{v:.4f}</b>" for k, v in summary["test_metrics"].items()) + "</p>")
        if name == "curves" and name in by_name:
            parts.append("<p class=\"meta\">Each trial's last epoch is marked: o completed, x stopped early by the "
                         "scheduler, X failed, &gt; not finished. Dotted lines: the epochs where the scheduler compares "
                         "trials.</p>")
        if name == "importance" and name in by_name:
            parts.append("<p class=\"meta\">fANOVA (Optuna's FanovaImportanceEvaluator) over each trial's best "
                         f"{e(record.metric)}: the share of its variance each parameter explains. Trials a scheduler "
                         "stopped early count with the best value they reached.</p>")
        if name in by_name:
            plot = by_name[name]
            data = base64.b64encode(plot.png).decode()
            parts.append(f"<p><img alt=\"{e(plot.title)}\" src=\"data:image/png;base64,{data}\"></p>")
        else:
            parts.append(f"<p class=\"note\">{e(notes.get(name, ''))}</p>")
    parts += ["<h2>Data and versions</h2>", _facts(summary), "</body></html>"]
    return "\n".join(parts) + "\n"


def _headline(record: RunRecord, summary: dict, best_id: str | None) -> str:
    e = html.escape
    if summary.get("best_trial_id"):
        value = summary["best_metrics"][record.metric]
        return (f"<p>Best: trial {e(short_trial_name(best_id))}, epoch {summary.get('best_epoch')}, {e(record.metric)} "
                f"<b>{value:.4f}</b>; {e(format_config(summary.get('best_config') or {}))}. "
                f"Model: <code>{e(summary.get('model_path') or '-')}</code></p>")
    if best_id is not None:
        return f"<p>Best so far: trial {e(short_trial_name(best_id))}, {e(record.metric)} <b>{record.best_value:.4f}</b></p>"
    reasons = list(dict.fromkeys(t["error"] for t in record.trials if t.get("error")))
    why = "".join(f"<li>{e(r)}</li>" for r in reasons)
    return f"<p><b>No trial produced a model.</b></p><ul>{why}</ul>" if record.trials else "<p>No trial has started.</p>"


def _trials_table(record: RunRecord, best_id: str | None) -> str:
    e = html.escape
    if not record.trials:
        return "<p class=\"note\">No trials.</p>"
    paths = list(((record.job or {}).get("search") or {}).get("space") or {})
    head = "".join(f"<th>{e(p)}</th>" for p in paths)
    rows = [f"<table><tr><th>trial</th><th>status</th><th>epochs</th><th>best {e(record.metric)}</th>"
            f"<th>last {e(record.metric)}</th>{head}<th>why</th></tr>"]
    for trial in record.trials:
        colour = STATUS_COLOURS.get(trial["status"], "#333")
        cells = "".join(f"<td>{e(_value(trial['config'].get(p)))}</td>" for p in paths)
        best_epoch = f" (epoch {trial['best_epoch']})" if trial.get("best_epoch") else ""
        why = trial.get("error") or ("stopped by the scheduler" if trial["status"] == "stopped_early" else "")
        rows.append(
            f"<tr class=\"{'best' if trial['trial_id'] == best_id else ''}\"><td>{e(short_trial_name(trial['trial_id']))}"
            f" <span class=\"meta\">{e(trial['trial_id'])}</span></td>"
            f"<td class=\"status\" style=\"color:{colour}\">{e(trial['status'].replace('_', ' '))}</td>"
            f"<td class=\"num\">{trial.get('epochs', 0)}</td><td class=\"num\">{_number(trial.get('best_metric'))}{best_epoch}</td>"
            f"<td class=\"num\">{_number(trial.get('last_metric'))}</td>{cells}<td>{e(why)}</td></tr>")
    return "\n".join(rows) + "</table>"


def _facts(summary: dict) -> str:
    e = html.escape
    from importlib.metadata import PackageNotFoundError, version

    versions = dict(summary.get("versions") or {})
    for package in ("matplotlib", "optuna"):
        try:
            versions.setdefault(package, version(package))
        except PackageNotFoundError:
            pass
    fingerprint = summary.get("data_fingerprint")
    rows = ["<table>"]
    rows.append(f"<tr><th>data fingerprint</th><td><code>{e(json.dumps(fingerprint, indent=None)) if fingerprint else '-'}"
                "</code></td></tr>")
    cluster = summary.get("cluster")
    if cluster:
        rows.append(f"<tr><th>cluster</th><td>{cluster.get('nodes')} node(s), {cluster.get('cpus'):g} CPUs, "
                    f"{cluster.get('gpus'):g} GPUs</td></tr>")
    rows.append("<tr><th>versions</th><td>" + e(", ".join(f"{k} {v}" for k, v in versions.items())) + "</td></tr>")
    return "\n".join(rows) + "</table>"


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _number(value) -> str:
    return f"{value:.4f}" if _finite(value) else "-"
