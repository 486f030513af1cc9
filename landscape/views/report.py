"""`landscape report`: one self-contained interactive HTML page of runs, probes, curvature, surfaces and ablations.

The page embeds plotly.js, so it works offline from file:// and can be mailed as one file. It reuses
the analysis functions of the static figures (`analysis`, `ablations.tables`), never a second
implementation of a number. Each input file gets a header; a file that cannot be read gets a one-line
note on the page while the rest renders. numpy, h5py and plotly only: no torch.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from landscape import __version__
from landscape.views.analysis import (RANGE_CAVEAT, SMOOTHNESS_MEASURES, batchnorm_pairs, best_accuracy,
                                      compare_smoothness, envelope, probe_bands, run_label, stability_threshold,
                                      trust_warnings)
from landscape.files.any_file import read_inputs
from landscape.views.figures import rate_colours
from landscape.files.hessian_file import HessianResult
from landscape.files.run_file import Run, shown_status
from landscape.files.surface_file import Surface

FILE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), ascending = th.dataset.order !== 'asc';
    var value = function (row) {
      var text = row.cells[column].innerText.trim(), number = parseFloat(text.replace(/,/g, ''));
      return isNaN(number) ? text : number;
    };
    rows.sort(function (a, b) {
      var x = value(a), y = value(b);
      var order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
      return ascending ? order : -order;
    });
    table.querySelectorAll('th').forEach(function (other) { delete other.dataset.order; });
    th.dataset.order = ascending ? 'asc' : 'desc';
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
th { background: #f4f4f4; } table.sortable th { cursor: pointer; } table.sortable th:after { content: ' \\21C5'; color: #999; }
.note { background: #fff4e5; border-left: 4px solid #f0a030; padding: .4rem .8rem; margin: .4rem 0; }
.muted { color: #666; font-size: .9rem; } .figure { margin: .5rem 0 1.2rem; }
td.better { background: #e3f4e3; } td.worse { background: #fbe3e3; } td.missing { color: #b00; }
"""


class Page:
    """Sections of HTML and plotly figures; `html()` puts them in one self-contained document."""

    def __init__(self, title: str):
        self.title, self.parts, self.figures = title, [], 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def heading(self, text: str, level: int = 2) -> None:
        self.add(f"<h{level}>{html.escape(text)}</h{level}>")

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{html.escape(text)}</p>')

    def caution(self, text: str) -> None:
        """A reason not to trust what follows (in the colours of a note, apart from the notes of skipped files)."""
        self.add(f'<p class="note caution">{html.escape(text)}</p>')

    def figure(self, fig, caption: str = "") -> None:
        self.figures += 1
        fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420,
                          legend=dict(font=dict(size=11)))
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{self.figures}",
                          config={"displaylogo": False, "responsive": True})
        self.add(f'<div class="figure">{div}' + (f'<p class="muted">{html.escape(caption)}</p>' if caption else "")
                 + "</div>")

    def table(self, header: list[str], rows: list[list], sortable: bool = True, classes=None) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = []
        for i, row in enumerate(rows):
            cells = []
            for j, cell in enumerate(row):
                css = classes[i][j] if classes else ""
                cells.append(f'<td class="{css}">{html.escape(str(cell))}</td>' if css else
                             f"<td>{html.escape(str(cell))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.add(f'<table class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(body)}</tbody></table>')

    def html(self) -> str:
        from plotly.offline import get_plotlyjs

        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
                + "\n".join(self.parts) + f"<script>{SORT_SCRIPT}</script></body></html>")


def build_report(paths: list[Path], out: Path, *, ablations: Path | None = None, preset: str = "full") -> Page:
    """The report of `paths` (run, surface, Hessian and path files) and the ablation results under `ablations`."""
    inputs = read_inputs(paths)
    page = Page(f"landscape report: {', '.join(p.name for p in paths) or 'ablations'}")
    page.heading(page.title, 1)
    page.add(f'<p class="muted">landscape {__version__}. Hover for values, click a legend entry to hide it, drag to '
             f"zoom, double-click to reset; click a table heading to sort.</p>")
    for note in inputs.notes:
        page.note(f"skipped: {note}")
    colours = {id(run): FILE_COLOURS[i % len(FILE_COLOURS)] for i, run in enumerate(inputs.runs)}
    labels = {id(run): run_label(run, inputs.runs) for run in inputs.runs}
    if inputs.runs:
        run_headers(page, inputs.runs, labels, out)
        summary_section(page, inputs.runs, labels)
        loss_sections(page, inputs.runs, labels, colours)
        probe_section(page, [r for r in inputs.runs if r.probe is not None and len(r.probe["step"])], labels, colours)
        sharpness_section(page, [r for r in inputs.runs if r.sharpness is not None and len(r.sharpness["step"])],
                          labels, colours)
    for surface in inputs.surfaces:
        surface_section(page, surface)
    if inputs.hessians:
        hessian_section(page, inputs.hessians)
    for item in inputs.paths:
        path_section(page, item)
    if ablations is not None:
        findings_section(page, ablations, preset)
        ablation_sections(page, ablations, preset)
    return page


def write_report(paths: list[Path], out: Path, *, ablations: Path | None = None, preset: str = "full",
                 overwrite: bool = False) -> Path:
    """Write the HTML report to `out` (atomically, one writer, never over an input) and return it."""
    from landscape.files.atomic import check_output, write_atomically
    from landscape.files.lock import WriterLock

    check_output(out, overwrite, paths)
    page = build_report(paths, out, ablations=ablations, preset=preset)
    with WriterLock(out):
        check_output(out, overwrite, paths)
        write_atomically(out, lambda buffer: buffer.write(page.html().encode("utf-8")))
    return out


def run_headers(page: Page, runs: list[Run], labels: dict, out: Path) -> None:
    page.heading("Runs")
    configs = [run.config for run in runs]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
                 and k not in ("data_root", "model", "dataset", "lrs", "epochs")]
    header = ["file", "model", "dataset", "rates", "status", "epochs", "wall time (s)", "best test acc (%)",
              "landscape / torch"] + [f"{k}" for k in differing]
    rows = []
    for run in runs:
        best, _ = best_accuracy(run)
        wall = run.epoch["wall_time"][-1] if len(run.epoch["wall_time"]) else float("nan")
        rows.append([run.path.name, labels[id(run)], run.config.get("dataset"), ", ".join(f"{lr:g}" for lr in run.lrs),
                     shown_status(run), f"{run.epochs_done}/{run.config.get('epochs', '?')}", f"{wall:.1f}",
                     " / ".join(f"{100 * b:.2f}" for b in best),
                     f"{run.attrs.get('landscape_version')} / {run.attrs.get('torch_version')}"]
                    + [json.dumps(run.config.get(k)) for k in differing])
    page.table(header, rows)
    links = ", ".join(f'<a href="{html.escape(relative(run.path, out))}">{html.escape(run.path.name)}</a>'
                      for run in runs)
    page.add(f'<p class="muted">Data files: {links}. Options that differ between the files are shown as columns.</p>')


def relative(path: Path, out: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), out.resolve().parent)


def summary_section(page: Page, runs: list[Run], labels: dict) -> None:
    pairs = batchnorm_pairs(runs)
    if not pairs:
        return
    page.heading("What the numbers say")
    page.add('<p class="muted">Each measure of a plain model against its BatchNorm variant, by the median and by the '
             "maximum over steps, probes and rates (smaller is smoother). Both are shown: at small scale BatchNorm can "
             "win on the worst cases and lose on the typical ones.</p>")
    for plain, normed in pairs:
        rows, classes, sentences = [], [], []
        for c in compare_smoothness(plain, normed):
            rows.append([c.measure, f"{c.plain[0]:.4g}", f"{c.batchnorm[0]:.4g}", c.smoother(0),
                         f"{c.plain[1]:.4g}", f"{c.batchnorm[1]:.4g}", c.smoother(1)])
            classes.append(["", "", "", "better" if c.smoother(0) == "BatchNorm" else "worse", "", "",
                            "better" if c.smoother(1) == "BatchNorm" else "worse"])
            sentences.append(f"{c.measure}: {c.smoother(0)} by the median, {c.smoother(1)} by the maximum")
        page.heading(f"{labels[id(plain)]} against {labels[id(normed)]}", 3)
        warnings = trust_warnings(plain, normed)
        serious = [w for w in warnings if not w.startswith("one seed")]
        verdict = "; ".join(sentences) + "."
        if serious:
            verdict = "Cannot be trusted as it stands: " + verdict
        page.add("<p>" + html.escape(verdict) + "</p>" if sentences else
                 '<p class="muted">No measure is present in both files.</p>')
        for warning in warnings:
            page.caution(warning)
        page.table(["measure", f"median {labels[id(plain)]}", f"median {labels[id(normed)]}", "smoother (median)",
                    f"max {labels[id(plain)]}", f"max {labels[id(normed)]}", "smoother (max)"], rows, classes=classes)
    page.add('<p class="muted">' + html.escape("; ".join(f"{k}: {v}" for k, v in SMOOTHNESS_MEASURES.items()))
             + "</p>")


def loss_sections(page: Page, runs: list[Run], labels: dict, colours: dict) -> None:
    import plotly.graph_objects as go

    page.heading("Training loss")
    for run in runs:
        fig = go.Figure()
        band = envelope(run.train_loss)
        fig.add_trace(go.Scatter(x=band.steps, y=band.high, line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=band.steps, y=band.low, fill="tonexty", fillcolor="rgba(150,150,150,0.3)",
                                 line=dict(width=0), name="min-max over rates"))
        palette = rate_colours(run.lrs)  # by size, the same rate the same colour as in the static figures
        for lr, curve in sorted(zip(run.lrs, run.train_loss), key=lambda pair: -pair[0]):
            colour = "#%02x%02x%02x" % tuple(int(255 * c) for c in palette[float(lr)])
            fig.add_trace(go.Scatter(x=np.arange(len(curve)), y=curve, name=f"lr = {lr:g}", mode="lines",
                                     line=dict(width=1, color=colour)))
        fig.update_layout(title=f"{labels[id(run)]}: training loss per learning rate", xaxis_title="training step",
                          yaxis_title="loss (cross-entropy)")
        page.figure(fig)
    fig, ranges = go.Figure(), go.Figure()
    for run in runs:
        band, colour, label = envelope(run.train_loss), colours[id(run)], labels[id(run)]
        fig.add_trace(go.Scatter(x=band.steps, y=band.high, line=dict(width=0.6, color=colour), legendgroup=label,
                                 showlegend=False, name=f"{label} max"))
        fig.add_trace(go.Scatter(x=band.steps, y=band.low, fill="tonexty", line=dict(width=0.6, color=colour),
                                 fillcolor=rgba(colour, 0.3), legendgroup=label, name=label))
        ranges.add_trace(go.Scatter(x=band.steps, y=band.range, name=label, line=dict(width=1, color=colour)))
    fig.update_layout(title="loss envelope: min-max training loss over learning rates", xaxis_title="training step",
                      yaxis_title="loss (cross-entropy)")
    ranges.update_layout(title="loss range: max - min over learning rates", xaxis_title="training step",
                         yaxis_title="max - min loss")
    page.figure(fig, "report 004, Figures 11-12")
    page.figure(ranges, f"report 004, Figure 13. Read it with care: {RANGE_CAVEAT}")


def rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def probe_section(page: Page, runs: list[Run], labels: dict, colours: dict) -> None:
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    if not runs:
        return
    page.heading("Santurkar probes")
    for lr in sorted({float(lr) for run in runs for lr in run.lrs}, reverse=True):
        fig = make_subplots(rows=1, cols=4, subplot_titles=("loss variation", "gradient predictiveness",
                                                           "relative to ||grad||", "beta-smoothness"))
        for run in runs:
            match = np.flatnonzero(np.isclose(run.lrs, lr))
            if not match.size:
                continue
            b, colour, label = probe_bands(run, int(match[0])), colours[id(run)], labels[id(run)]
            norm = run.probe["grad_norm"][int(match[0])]
            for col, (low, high) in enumerate(((b.loss_low, b.loss_high), (b.grad_low, b.grad_high),
                                               (b.grad_low / norm, b.grad_high / norm)), start=1):
                fig.add_trace(go.Scatter(x=b.steps, y=high, line=dict(width=0.5, color=colour), legendgroup=label,
                                         showlegend=False, name=f"{label} max"), row=1, col=col)
                fig.add_trace(go.Scatter(x=b.steps, y=low, fill="tonexty", fillcolor=rgba(colour, 0.3),
                                         line=dict(width=0.5, color=colour), legendgroup=label,
                                         showlegend=col == 1, name=label), row=1, col=col)
            fig.add_trace(go.Scatter(x=b.steps, y=b.beta, line=dict(color=colour), legendgroup=label, showlegend=False,
                                     name=f"{label} beta"), row=1, col=4)
        fig.update_layout(title=f"probes at lr = {lr:g} (bands over the step multipliers)")
        fig.update_xaxes(title_text="training step")
        page.figure(fig, "Santurkar et al. (2018), Fig. 4")


def sharpness_section(page: Page, runs: list[Run], labels: dict, colours: dict) -> None:
    import plotly.graph_objects as go

    if not runs:
        return
    page.heading("Sharpness against the stability threshold")
    fig = go.Figure()
    thresholds_drawn = set()
    symbols = ("circle", "square", "diamond", "triangle-up", "x", "star")
    for run in runs:
        for i, lr in enumerate(run.lrs):
            name = f"{labels[id(run)]} lr={lr:g}"
            fig.add_trace(go.Scatter(x=run.sharpness["step"], y=run.sharpness["top"][i, :, 0], name=name,
                                     mode="lines+markers", marker=dict(symbol=symbols[i % len(symbols)], size=7),
                                     line=dict(color=colours[id(run)])))
            threshold = stability_threshold(run.config, float(lr))
            if threshold and (float(lr), threshold) not in thresholds_drawn:
                thresholds_drawn.add((float(lr), threshold))
                steps = run.sharpness["step"]
                fig.add_trace(go.Scatter(x=[steps.min(), steps.max()], y=[threshold, threshold], mode="lines",
                                         name=f"threshold at lr={lr:g}", line=dict(color="#555", dash="dash")))
    fig.update_layout(title="sharpness (top Hessian eigenvalue): colour by file, marker by rate; thresholds dashed",
                      xaxis_title="training step", yaxis_title="eigenvalue (log scale)", yaxis_type="log")
    page.figure(fig, "Cohen et al. (2021): 2/lr for SGD, (2 + 2b)/lr with momentum b; none for Adam-family optimizers")


def surface_section(page: Page, surface: Surface) -> None:
    import plotly.graph_objects as go

    page.heading(f"Loss surface: {surface.label} ({surface.attrs.get('directions')}, {surface.dims}D)")
    if not surface.complete:
        page.note(f"{surface.path.name} is partial: {int(surface.done.sum())} of {surface.done.size} points computed "
                  f"(status {surface.status}); the rest is blank")
    if surface.nonfinite:
        page.note(f"{surface.path.name}: {surface.nonfinite} computed point(s) have a non-finite loss (left blank)")
    if surface.dims == 1:
        fig = go.Figure(go.Scatter(x=surface.x, y=surface.loss, name="loss"))
        fig.update_layout(title=surface.path.name, xaxis_title="coordinate along the direction", yaxis_title="loss")
        page.figure(fig)
        return
    cap = float(np.nanpercentile(surface.loss, 95)) if np.isfinite(surface.loss).any() else None
    clipped = np.clip(surface.loss, None, cap)
    fig = go.Figure(go.Surface(x=surface.x, y=surface.y, z=clipped, colorscale="Viridis", colorbar=dict(title="loss")))
    fig.update_layout(title=f"{surface.path.name} (rotatable; values above the 95th percentile clipped)", height=520)
    page.figure(fig)
    contour = go.Figure(go.Contour(x=surface.x, y=surface.y, z=clipped, colorscale="Viridis", ncontours=30,
                                   colorbar=dict(title="loss"), name="loss"))
    if surface.trajectory is not None and "y" in surface.trajectory:
        contour.add_trace(go.Scatter(x=surface.trajectory["x"], y=surface.trajectory["y"], mode="lines+markers+text",
                                     text=[str(int(e)) for e in surface.trajectory["epoch"]], textposition="top right",
                                     name="trajectory (epochs)", line=dict(color="black")))
    contour.update_layout(title=f"{surface.path.name}: contours", xaxis_title="x", yaxis_title="y",
                          yaxis=dict(scaleanchor="x", scaleratio=1))  # the grid's own aspect, never stretched
    page.figure(contour)


def hessian_section(page: Page, results: list[HessianResult]) -> None:
    import plotly.graph_objects as go

    page.heading("Hessian spectra")
    for result in results:
        if result.partial:
            page.note(f"{result.path.name} is partial: {int(result.done.sum())} of {result.done.size} measurements "
                      f"made (status {result.status})")
        if result.converged is not None and not result.converged[result.done].all():
            page.note(f"{result.path.name}: some eigenvalues did not converge within max_steps (see the file's "
                      f"/error_bounds)")
    eig = go.Figure()
    density = go.Figure()
    for f, result in enumerate(results):
        colour = FILE_COLOURS[f % len(FILE_COLOURS)]
        for i, lr in enumerate(result.arrays["lrs"]):
            eig.add_trace(go.Scatter(x=result.arrays["epochs"], y=result.arrays["eigenvalues"][i, :, 0],
                                     mode="lines+markers", name=f"{result.label} lr={lr:g}",
                                     marker=dict(size=9, symbol=("circle", "square", "diamond", "triangle-up",
                                                                 "x", "star")[i % 6]),
                                     line=dict(color=colour, dash=("solid", "dash", "dot", "dashdot")[i % 4])))
            if "density/grid" in result.arrays:
                density.add_trace(go.Scatter(x=result.arrays["density/grid"][i, -1],
                                             y=np.maximum(result.arrays["density/values"][i, -1], 1e-12),
                                             name=f"{result.label} lr={lr:g}", line=dict(color=colour)))
    eig.update_layout(title="top Hessian eigenvalue per snapshot: colour by file, marker by rate",
                      xaxis_title="snapshot epoch", yaxis_title="eigenvalue")
    page.figure(eig)
    if density.data:
        density.update_layout(title="spectral density (stochastic Lanczos quadrature)", xaxis_title="eigenvalue",
                              yaxis_title="density", yaxis_type="log")
        page.figure(density, "Ghorbani et al. (2019)")


def path_section(page: Page, item) -> None:
    """A path file: barriers per path and split, and loss and accuracy along t."""
    import plotly.graph_objects as go

    attrs = item.attrs
    page.heading(f"Mode connectivity: {attrs.get('a', 'A')} to {attrs.get('b', 'B')}")
    page.add(f'<p class="muted">{len(item.t)} points; BatchNorm {html.escape(str(attrs.get("bn")))}; alignment '
             f'{html.escape(str(attrs.get("align")))}; curve {html.escape(str(attrs.get("curve")))}; '
             f'{html.escape(str(attrs.get("images_used", "")))}. Barrier: the largest excess of the loss over the '
             f'straight interpolation of its ends (Frankle et al. 2020).</p>')
    rows = [[name, split, f"{item.barriers[name][split].get('loss', np.nan):.4g}",
             f"{100 * item.barriers[name][split].get('acc', np.nan):.2f}",
             f"{metrics['loss'][0]:.4g}", f"{metrics['loss'][-1]:.4g}"]
            for name, splits in item.values.items() for split, metrics in splits.items()]
    page.table(["path", "split", "loss barrier", "accuracy drop (%)", "loss at A", "loss at B"], rows)
    for metric in ("loss", "acc"):
        fig = go.Figure()
        for name, splits in item.values.items():
            for split, metrics in splits.items():
                if metric in metrics:
                    fig.add_trace(go.Scatter(x=item.t, y=metrics[metric], mode="lines+markers",
                                             name=f"{name} ({split})",
                                             line=dict(dash="solid" if split == "train" else "dash")))
        if fig.data:
            fig.update_layout(title=f"{metric} along the paths (t = 0: A, t = 1: B)", xaxis_title="t",
                              yaxis_title=metric)
            page.figure(fig)


def findings_section(page: Page, root: Path, preset: str) -> None:
    """The studies' verdicts first: per study its question, each claim with its statistic, interval and verdict,
    and a figure per claim (the two groups' models, or the measure against its target)."""
    import plotly.graph_objects as go

    from landscape.ablations.correlation import spans_decades
    from landscape.ablations.finding import verdicts
    from landscape.ablations.spec import load_spec, spec_paths
    from landscape.ablations.study import VERDICT_RULE
    from landscape.errors import UsageError
    from landscape.files.measures_file import info_columns, read_measures

    studies = []
    for path in spec_paths():
        spec = load_spec(path)
        measures = root / spec.name / preset / "measures.h5"
        if spec.study is not None and measures.is_file():
            try:
                studies.append((spec, read_measures(measures)))
            except UsageError as exc:
                page.note(str(exc))
    if not studies:
        return
    page.heading(f"Findings (preset {preset})")
    page.add(f"<p class=\"muted\">{html.escape(VERDICT_RULE.replace('**', ''))}</p>")
    for spec, table in studies:
        page.heading(spec.study.question, 3)
        page.add(f'<p class="muted">{html.escape(spec.study.paper)}</p>')
        judged = verdicts(spec, table, preset)
        page.table(["claim", "source", "statistic", "95% interval", "models", "verdict"],
                   [[v.claim.claim, v.claim.source, f"{v.statistic:.3g}", f"[{v.interval[0]:.3g}, {v.interval[1]:.3g}]",
                     v.models, v.verdict] for v in judged],
                   classes=[["", "", "", "", "", {"agrees": "better", "disagrees": "worse"}.get(v.verdict, "")]
                            for v in judged])
        study_curves(page, spec, table, root / spec.name / preset)
        columns = info_columns(table)
        for verdict in judged:
            claim = verdict.claim
            x = table.values.get(claim.measure)
            if x is None:
                continue
            if claim.kind == "level":
                axis = np.asarray(columns.get(claim.axis, [""] * len(x)), dtype=object).astype(str)
                fig = go.Figure([go.Box(y=x[axis == str(claim.at)], name=f"{claim.axis}={claim.at}",
                                        boxpoints="all")])
                fig.add_hline(y=claim.threshold, line_dash="dash", annotation_text=f"threshold {claim.threshold:g}")
                fig.update_layout(title=f"{claim.measure} at {claim.axis}={claim.at}: {verdict.verdict}",
                                  yaxis_title=claim.measure)
            elif claim.kind == "difference":
                axis = np.asarray(columns.get(claim.axis, [""] * len(x)), dtype=object).astype(str)
                fig = go.Figure([go.Box(y=x[axis == str(side)], name=f"{claim.axis}={side}", boxpoints="all")
                                 for side in (claim.low, claim.high)])
                fig.update_layout(title=f"{claim.measure}: {verdict.verdict}", yaxis_title=claim.measure,
                                  yaxis_type="log" if spans_decades(x) else "linear")
            else:
                y = table.values.get(claim.target)
                if y is None:
                    continue
                fig = go.Figure([go.Scatter(x=x, y=y, mode="markers", text=table.cells)])
                fig.update_layout(title=f"{claim.measure} against {claim.target}: tau {verdict.statistic:.2f}, "
                                        f"{verdict.verdict}", xaxis_title=claim.measure, yaxis_title=claim.target,
                                  xaxis_type="log" if spans_decades(x) else "linear")
            page.figure(fig)


def study_curves(page: Page, spec, table, folder: Path) -> None:
    """A study's curves against its axis (mean, 95% interval over seeds) and the mean test loss along its pairs'
    paths, one line per axis value: the figures a reader looks at before the claims."""
    import plotly.graph_objects as go

    from landscape.ablations.curves import axis_curves, path_series, path_split
    from landscape.ablations.finding import criterion_met

    curves = axis_curves(spec, table, criterion_met(table))
    axis = spec.axes[0] if spec.axes else ""
    for measure, points in curves.items():
        fig = go.Figure([go.Scatter(x=[p.value for p in points], y=[p.mean for p in points], mode="lines+markers",
                                    error_y=dict(type="data", symmetric=False,
                                                 array=[p.high - p.mean for p in points],
                                                 arrayminus=[p.mean - p.low for p in points]),
                                    text=[f"{p.models} models" for p in points])])
        fig.update_layout(title=f"{measure} against {axis} (mean, 95% interval over seeds)", xaxis_title=axis,
                          yaxis_title=measure, xaxis_type="category")
        page.figure(fig)
    for name, by_value in path_series(spec, table, folder).items():
        fig = go.Figure([go.Scatter(x=pairs[0][0], y=np.mean([loss for _, loss in pairs], axis=0), mode="lines",
                                    name=f"{axis}={value} (n={len(pairs)})") for value, pairs in by_value.items()])
        split = path_split(spec)
        fig.update_layout(title=f"{split} loss along the "
                                f"{'line after weight matching' if name == 'aligned_line' else name}, mean over pairs",
                          xaxis_title="t (0: first model, 1: second)", yaxis_title=f"{split} loss")
        page.figure(fig)


def ablation_sections(page: Page, root: Path, preset: str) -> None:
    import plotly.graph_objects as go

    from landscape.ablations.spec import METRICS, load_spec, spec_paths
    from landscape.ablations.results import collect, summary
    from landscape.ablations.tables import preset_note, table_cells

    page.heading(f"Ablations (preset {preset})")
    found = 0
    for path in spec_paths():
        spec = load_spec(path)
        if not (root / spec.name / preset).is_dir():
            continue
        found += 1
        rows = collect(spec, preset, root)
        header, shown, machine = table_cells(spec, rows, preset)
        classes = []
        for line in shown:
            classes.append(["missing" if cell == "missing" else
                            ("better" if header[j] == "difference" and cell.startswith("+") else
                             "worse" if header[j] == "difference" and cell.startswith("-") else "")
                            for j, cell in enumerate(line)])
        page.heading(spec.title, 3)
        page.add(f'<p class="muted">{html.escape(spec.source)}. {html.escape(preset_note(spec, preset))}.</p>'
                 f"<p>{html.escape(spec.description.strip())}</p>")
        page.table(header, shown, classes=classes)
        metric = spec.metrics[0]
        names = [row.cell.label for row in rows]
        means = [summary(row.values.get(metric, []))[0] for row in rows]
        reported = [row.cell.reference.get(metric, float("nan")) for row in rows]
        fig = go.Figure([go.Bar(x=names, y=means, name=f"ours ({preset})"), go.Bar(x=names, y=reported, name="reported")])
        fig.update_layout(title=f"{METRICS[metric][0]}: ours against the report", barmode="group",
                          yaxis_title=METRICS[metric][0])
        page.figure(fig)
        cell_curves(page, rows)
        cell_envelopes(page, spec, rows)
        if (root / spec.name / preset / "measures.h5").exists():
            measures_section(page, root / spec.name / preset / "measures.h5", spec.axes)
    if not found:
        page.note(f"no ablation results under {root} for preset {preset}: run `landscape ablate run ... --preset {preset}`")


def measures_section(page: Page, path: Path, axes: list[str]) -> None:
    """`ablate measure`'s rank correlations of each measure with test accuracy and the gap, and the scatter."""
    import plotly.graph_objects as go

    from landscape.ablations.correlation import correlations, fmt, measure_names, targets_of
    from landscape.files.measures_file import read_measures
    from landscape.errors import UsageError

    try:
        table = read_measures(path)
    except UsageError as exc:
        page.note(str(exc))
        return
    page.heading("Does the landscape explain the ablation?", 4)
    page.add('<p class="muted">Kendall\'s tau of each measure with the final test accuracy and with the generalization '
             'gap (train minus test accuracy), over every cell and seed, with a 95% bootstrap interval; granulated tau '
             '(Jiang et al. 2019) with several axes.</p>')
    rows = []
    for row in correlations(table, axes):
        low, high = row["interval test accuracy"]
        rows.append([row["measure"], row["points"], fmt(row["tau test accuracy"]), f"[{fmt(low)}, {fmt(high)}]",
                     fmt(row["granulated test accuracy"]), fmt(row["tau generalization gap"]), row["note"]])
    page.table(["measure", "points", "tau, test acc", "95% interval", "granulated", "tau, gap", "note"], rows)
    accuracy = targets_of(table)["test accuracy"]
    fig = go.Figure()
    for name in measure_names(table):
        fig.add_trace(go.Scatter(x=table.values[name], y=accuracy, mode="markers", name=name, text=table.cells))
    fig.update_layout(title="each measure against the final test accuracy (one point per cell and seed)",
                      xaxis_title="measure", yaxis_title="final test accuracy (%)")
    page.figure(fig)


def cell_curves(page: Page, rows) -> None:
    """Every cell's training and test loss and accuracy per epoch (its best rate), as the reports draw them."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    present = [row for row in rows if not row.missing]
    if not present:
        return
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss (solid: train, dashed: test)",
                                                       "accuracy % (solid: train, dashed: test)"))
    for i, row in enumerate(present):
        run = row.runs[0]
        r = int(np.argmax(np.nan_to_num(run.epoch["test_acc"], nan=-1).max(axis=1))) if run.epochs_done else 0
        epochs = np.arange(1, run.epochs_done + 1)
        colour = FILE_COLOURS[i % len(FILE_COLOURS)]
        for col, (train, test, scale) in enumerate((("train_loss", "test_loss", 1), ("train_acc", "test_acc", 100)),
                                                   start=1):
            fig.add_trace(go.Scatter(x=epochs, y=scale * run.epoch[train][r], mode="lines+markers",
                                     line=dict(color=colour), name=row.cell.label, legendgroup=row.cell.label,
                                     showlegend=col == 1), row=1, col=col)
            fig.add_trace(go.Scatter(x=epochs, y=scale * run.epoch[test][r], mode="lines+markers",
                                     line=dict(color=colour, dash="dash"), name=f"{row.cell.label} test",
                                     legendgroup=row.cell.label, showlegend=False), row=1, col=col)
    fig.update_layout(title="training curves of the cells")
    fig.update_xaxes(title_text="epoch")
    page.figure(fig)


def cell_envelopes(page: Page, spec, rows) -> None:
    """For cells that train several rates: the loss envelope per value of the axes other than the model (report
    004's Figs. 11 and 12 are one batch size each)."""
    import plotly.graph_objects as go

    multi = [row for row in rows if row.runs and len(row.runs[0].lrs) > 1]
    others = [axis for axis in spec.axes if axis != "model"]
    groups: dict = {}
    for row in multi:
        groups.setdefault(tuple(row.cell.axis.get(a) for a in others), []).append(row)
    for key, members in groups.items():
        fig = go.Figure()
        for i, row in enumerate(members):
            band, colour = envelope(row.runs[0].train_loss), FILE_COLOURS[i % len(FILE_COLOURS)]
            fig.add_trace(go.Scatter(x=band.steps, y=band.high, line=dict(width=0.6, color=colour),
                                     legendgroup=row.cell.label, showlegend=False, name=f"{row.cell.label} max"))
            fig.add_trace(go.Scatter(x=band.steps, y=band.low, fill="tonexty", line=dict(width=0.6, color=colour),
                                     fillcolor=rgba(colour, 0.3), legendgroup=row.cell.label, name=row.cell.label))
        where = ", ".join(f"{a}={v}" for a, v in zip(others, key))
        fig.update_layout(title="loss envelope over the learning rates" + (f" ({where})" if where else ""),
                          xaxis_title="training step", yaxis_title="loss")
        page.figure(fig, "report 004, Figures 11-12")


def md(text) -> str:
    """Text from a file, safe in a Markdown table cell: HTML escaped (no tag of a stranger's file is kept) and no
    pipe or newline to break the table."""
    return html.escape(" ".join(str(text).split())).replace("|", "&#124;")


def write_markdown(paths: list[Path], out: Path, overwrite: bool = False) -> Path:
    """`report.md` for GitHub: the run headers and comparisons as Markdown tables, the static figures as PNGs."""
    from landscape.files.atomic import check_output, check_writable_folder, write_atomically
    from landscape.files.lock import WriterLock
    from landscape.views.curvature_plots import plot_hessians
    from landscape.views.figures import protect
    from landscape.views.plots import plot_runs
    from landscape.views.surface_plots import plot_surfaces

    check_output(out, overwrite, paths)
    inputs = read_inputs(paths)
    folder = out.with_name(out.stem + "_figures")
    check_writable_folder(folder, "--out")
    with WriterLock(out), protect(paths):
        check_output(out, overwrite, paths)
        pngs = []
        if inputs.runs:
            pngs += plot_runs(inputs.runs, folder)
        if inputs.surfaces:
            pngs += plot_surfaces(inputs.surfaces, folder)
        if inputs.hessians:
            pngs += plot_hessians(inputs.hessians, folder)
        if inputs.paths:
            from landscape.views.path_plots import plot_paths

            pngs += plot_paths(inputs.paths, folder)
        lines = ["# landscape report", ""] + [f"> skipped: {md(note)}" for note in inputs.notes]
        labels = {id(run): run_label(run, inputs.runs) for run in inputs.runs}
        if inputs.runs:
            lines += ["", "| file | model | rates | status | epochs | best test acc (%) |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for run in inputs.runs:
                best, _ = best_accuracy(run)
                lines.append(f"| [{md(run.path.name)}]({relative(run.path, out)}) | {md(labels[id(run)])} | "
                             f"{', '.join(f'{lr:g}' for lr in run.lrs)} | {md(shown_status(run))} | "
                             f"{run.epochs_done} | {' / '.join(f'{100 * b:.2f}' for b in best)} |")
        for plain, normed in batchnorm_pairs(inputs.runs):
            lines += ["", f"## {md(labels[id(plain)])} against {md(labels[id(normed)])}", ""]
            lines += [f"> {md(w)}" for w in trust_warnings(plain, normed)]
            lines += ["", "| measure | median plain | median BN | smoother | max plain | max BN | smoother |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {c.measure} | {c.plain[0]:.4g} | {c.batchnorm[0]:.4g} | {c.smoother(0)} | {c.plain[1]:.4g} | "
                      f"{c.batchnorm[1]:.4g} | {c.smoother(1)} |" for c in compare_smoothness(plain, normed)]
        lines += ["", "## Figures", ""] + [f"![{md(p.stem)}]({relative(p, out)})" for p in pngs if p.suffix == ".png"]
        write_atomically(out, lambda buffer: buffer.write(("\n".join(lines) + "\n").encode("utf-8")))
    return out
