"""`landscape info`: what a run, surface or Hessian file holds, as plain text (numpy and h5py only, no torch).

Text from a file's attributes is shown as text: terminal control sequences are removed, so a file from a
stranger cannot rewrite the reader's terminal.
"""
from __future__ import annotations

import re

import numpy as np

from landscape.files.hessian_file import HessianResult
from landscape.files.path_file import PathFile
from landscape.files.measures_file import MeasuresTable
from landscape.files.run_file import Run, criterion_text, shown_status
from landscape.files.surface_file import Surface
from landscape.options import DEFAULT_SHARPNESS_IMAGES
from landscape.views.analysis import (best_accuracy, check_errors, final_accuracy, fmt_pct, probe_medians,
                                      stability_threshold, threshold_formula)

CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """`text` without terminal escape sequences and control characters (newlines kept)."""
    return CONTROL.sub("", str(text))


def describe(item) -> str:
    """`landscape info` of a run, surface or Hessian file."""
    if isinstance(item, Surface):
        return plain(describe_surface(item))
    if isinstance(item, HessianResult):
        return plain(describe_hessian(item))
    if isinstance(item, PathFile):
        return plain(describe_path(item))
    if isinstance(item, MeasuresTable):
        return plain(describe_measures(item))
    return plain(describe_run(item))


def describe_measures(table: MeasuresTable) -> str:
    """A measures file: where it came from, the models, and each measure's range over them."""
    attrs = table.attrs
    source = f"spec {attrs['spec']}, preset {attrs.get('preset')}" if attrs.get("spec") else \
        f"{attrs.get('model', 'a model')} ({attrs.get('source', 'python')})"
    done = table.done.astype(bool)
    lines = [f"{table.path}: measures file, {source}",
             f"            {int(done.sum())} of {len(table.cells)} models measured on {attrs.get('images', '?')} "
             f"training and {attrs.get('test_images', '?')} test images; measures {attrs.get('measures', '?')}",
             f"{'measure':>36}  {'min':>10}  {'median':>10}  {'max':>10}"]
    for name, values in table.values.items():
        finite = values[done & np.isfinite(values)]
        if finite.size:
            lines.append(f"{name:>36}  {finite.min():>10.4g}  {np.median(finite):>10.4g}  {finite.max():>10.4g}")
    return "\n".join(lines)


END_STATISTICS_SAID = {
    "recomputed": "A and B with BatchNorm statistics re-estimated on the training images (as every point; "
                  "--bn eval for their own running statistics)",
    "running": "plain evaluations of A and B (their own running statistics)",
    "batch": "A and B with batch statistics",
    "none": "plain evaluations of A and B (no BatchNorm)"}


def describe_path(item: PathFile) -> str:
    """A path file: what was connected and how, and each path's barriers per split."""
    attrs = item.attrs
    lines = [f"{item.path}: path file (landscape connect), {attrs.get('a', 'A')} to {attrs.get('b', 'B')}",
             f"            {len(item.t)} points; BatchNorm {attrs.get('bn')}"
             + (f" on {attrs.get('bn_images')} training images" if attrs.get("bn") == "recompute" else "")
             + f"; alignment {attrs.get('align')}; curve {attrs.get('curve')}; {attrs.get('images_used', '')}",
             f"            ends: {END_STATISTICS_SAID.get(str(attrs.get('end_statistics')), 'as the points')}"]
    if item.alignment:
        a = item.alignment
        lines.append(f"alignment   weight matching: {int(a.get('moved_units', 0))} units moved in {int(a.get('groups', 0))} "
                     f"groups, similarity {float(a.get('similarity_before', np.nan)):.4g} -> "
                     f"{float(a.get('similarity_after', np.nan)):.4g} ({int(a.get('sweeps', 0))} sweeps)")
    lines.append(f"{'path':>14}  {'split':>5}  {'loss barrier':>12}  {'end losses':>17}  {'acc drop':>8}")
    for name, splits in item.values.items():
        for split, metrics in splits.items():
            loss = metrics.get("loss")
            ends = f"{loss[0]:.4g} / {loss[-1]:.4g}" if loss is not None else "-"
            drop = item.barriers[name][split].get("acc")
            lines.append(f"{name:>14}  {split:>5}  {item.barriers[name][split].get('loss', np.nan):>12.4g}  {ends:>17}  "
                         + (f"{100 * drop:>7.2f}%" if drop is not None else f"{'-':>8}"))
    return "\n".join(lines)


def lineage(run) -> list[str]:
    """A branched run's parent (`landscape run --branch-from`), or nothing."""
    if run.attrs.get("parent_file") is None:
        return []
    epoch, step = int(run.attrs["branch_epoch"]), int(run.attrs["branch_step"])
    point = f"after epoch {epoch} (step {step})" if step == epoch * int(run.attrs["steps_per_epoch"]) \
        else f"after step {step} (in epoch {epoch + 1})"
    return [f"branched    from {run.attrs['parent_file']} (its run lr={float(run.attrs['parent_lr']):g}) {point}; "
            f"data order seed {int(run.attrs['data_seed'])}"]


def describe_criterion(run: Run) -> list[str]:
    """Lines on a run trained to a criterion: what it was, when each run met it, its last value."""
    criterion = run.criterion
    metric = criterion["metric"]
    lines = [f"criterion   {criterion_text(metric, float(criterion['threshold']))} on the whole training subset "
             f"(eval mode, after each epoch), --epochs {run.config.get('epochs')} as the cap",
             f"{'lr':>10}  {'met':>22}  {'train loss':>10}  {'train acc':>9}"]
    for r, lr in enumerate(run.lrs):
        met = int(criterion["met_epoch"][r])
        seen = np.flatnonzero(np.isfinite(criterion["train_loss"][r]))
        last = seen[-1] if len(seen) else None
        if met > 0:
            when = f"after epoch {met}"
        elif run.status == "complete" or run.diverged_step[r] >= 0:
            when = "no: diverged" if run.diverged_step[r] >= 0 else "no: cap reached"
        else:
            when = "not yet"
        loss = f"{criterion['train_loss'][r, last]:.4g}" if last is not None else "-"
        acc = fmt_pct(criterion["train_acc"][r, last]) if last is not None else "-"
        lines.append(f"{lr:>10g}  {when:>22}  {loss:>10}  {acc:>9}")
    return lines


def describe_run(run: Run) -> str:
    """A run file: model, options, progress, status, per-rate accuracies, probes and sharpness."""
    config = run.config
    best, best_epoch = best_accuracy(run)
    final = final_accuracy(run)
    epochs_planned = config.get("epochs") or "?"
    recorded = run.attrs.get("source") == "recorder"
    lines = [
        f"file        {run.path}",
        f"model       {run.model}  (" + ("" if recorded else f"width {config.get('width', 1)}, ") +
        f"{run.attrs.get('parameters', '?')} parameters, "
        f"{float(run.attrs.get('model_size_mb', float('nan'))):.1f} MB per run)" +
        ("  recorded from its own training loop (landscape.Recorder)" if recorded else ""),
        f"data        {config.get('dataset') or 'not named'}" + ("" if recorded else
                                                                 f"  ({run.attrs.get('train_images', '?')} train / "
                                                                 f"{run.attrs.get('test_images', '?')} test images, "
                                                                 f"augment {config.get('augment')})"),
        f"training    {config.get('optimizer')}, schedule {config.get('schedule', 'constant')}, batch "
        f"{config.get('batch_size')}, weight decay {config.get('weight_decay')}, seed {config.get('seed')}, "
        f"device {run.attrs.get('device')}, {run.attrs.get('threads', '?')} CPU threads",
        *lineage(run),
        f"progress    {run.epochs_done}/{epochs_planned} epochs, {run.steps} steps",
        f"status      {shown_status(run)}" + (f"  ({run.attrs.get('message')})" if run.attrs.get("message") else ""),
        f"created     {run.attrs.get('created')}  (landscape {run.attrs.get('landscape_version')}, "
        f"torch {run.attrs.get('torch_version')}, schema {run.attrs.get('schema_version')})",
        "",
        f"{'lr':>10}  {'final test acc':>14}  {'best test acc':>13}  {'best epoch':>10}  {'diverged at step':>16}"
        f"  {'stopped early':>13}",
    ]
    for r, lr in enumerate(run.lrs):
        div = str(int(run.diverged_step[r])) if run.diverged_step[r] >= 0 else "-"
        stop = f"epoch {int(run.stopped_epoch[r])}" if run.stopped_epoch[r] >= 0 else "-"
        epoch = str(int(best_epoch[r])) if best_epoch[r] else "-"
        lines.append(f"{lr:>10g}  {fmt_pct(final[r]):>14}  {fmt_pct(best[r]):>13}  {epoch:>10}  {div:>16}  {stop:>13}")
    if run.criterion is not None:
        lines += ["", *describe_criterion(run)]
    if run.probe is not None:
        probe = run.probe
        lines += ["", f"probes      {len(probe['step'])} probed steps, multipliers "
                      f"{','.join(f'{m:g}' for m in probe['multipliers'])}, direction "
                      f"{run.config.get('probe_direction', 'update')}; medians over probes:",
                  f"{'lr':>10}  {'loss variation':>14}  {'max grad dist':>13}  {'beta':>10}"]
        for lr, (variation, grad, beta) in zip(run.lrs, probe_medians(run)):
            lines.append(f"{lr:>10g}  {variation:>14.4g}  {grad:>13.4g}  {beta:>10.4g}")
    if run.sharpness is not None and len(run.sharpness["step"]):
        sharp = run.sharpness
        hvps = sharp.get("hvps")
        cost = (f", {int(np.median(hvps[hvps > 0]))} Hessian-vector products per measurement (median; "
                f"{int(hvps.sum())} in all)") if hvps is not None and (hvps > 0).any() else ""
        warm = "warm-started" if int(sharp["attrs"].get("warm_start", 0)) else "cold"
        method = str(sharp["attrs"].get("sharpness_method", "lanczos"))
        what = {"lanczos": f"top Hessian eigenvalue, {warm} Lanczos{cost}",
                "critical": f"critical sharpness 2/(s_c lr) along the update, "
                            f"{sharp['attrs'].get('forward_passes', '?')} forward passes each",
                "directional": f"curvature d'Hd/|d|^2 along the update{cost}"}.get(method, method)
        default = "" if str(config.get("sharpness_images", "")) != "0" else \
            f" (the default, {DEFAULT_SHARPNESS_IMAGES} or all training images when fewer)"
        lines += ["", f"sharpness   {len(sharp['step'])} measurements on {sharp['images']} images{default} ({what}); "
                      f"threshold: {threshold_formula(config)}"]
        if method == "critical" and np.isnan(sharp["top"]).any():
            lines.append(f"            NaN at {int(np.isnan(sharp['top'][..., 0]).sum())} of {sharp['top'][..., 0].size} "
                         f"run-measurements: no crossing within the search's bracket, or the run had stopped")
        errors = check_errors(run)
        if errors is not None:
            lines.append(f"            checked against {len(sharp['check_step'])} cold Lanczos runs to convergence: "
                         f"median relative error {100 * errors[0]:.3g}%, worst {100 * errors[1]:.3g}%")
        lines += [
                  f"{'lr':>10}  {'last':>10}  {'max':>10}  {'threshold':>10}  {'last/thr':>8}  {'max/thr':>8}"]
        for r, lr in enumerate(run.lrs):
            top = run.sharpness["top"][r, :, 0]
            last = top[np.isfinite(top)][-1] if np.isfinite(top).any() else np.nan
            peak = np.nanmax(top) if np.isfinite(top).any() else np.nan
            threshold = stability_threshold(config, float(lr))
            ratio = (lambda v: f"{v / threshold:.2f}") if threshold else (lambda v: "-")
            lines.append(f"{lr:>10g}  {last:>10.4g}  {peak:>10.4g}  {threshold or float('nan'):>10.4g}  "
                         f"{ratio(last):>8}  {ratio(peak):>8}")
    return "\n".join(lines)


def describe_surface(surface: Surface) -> str:
    """A surface file: where it is from, its grid, how far it got, the minimum and what was not finite."""
    done, total = int(surface.done.sum()), surface.done.size
    status = surface.status if surface.complete else f"partial ({done} of {total} points; {surface.status})"
    grid = " x ".join(f"{len(a)} ({a[0]:g}..{a[-1]:g})" for a in ([surface.x] if surface.y is None
                                                                   else [surface.x, surface.y]))
    lines = [f"file        {surface.path}",
             f"surface     {surface.dims}D {surface.attrs.get('directions')} directions around {surface.label} "
             f"({surface.attrs.get('run_file') or surface.attrs.get('weights_file') or surface.attrs.get('source')})",
             f"grid        {grid}; {surface.attrs.get('images')} images, BN {surface.attrs.get('bn')}, "
             f"{surface.attrs.get('precision')} on {surface.attrs.get('device')}",
             f"status      {status}"]
    if done:
        finite = surface.done & np.isfinite(surface.loss)
        if finite.any():
            index = np.unravel_index(np.nanargmin(np.where(finite, surface.loss, np.nan)), surface.loss.shape)
            where = f"x = {surface.x[index[-1]]:g}" + (f", y = {surface.y[index[0]]:g}" if surface.dims == 2 else "")
            lines.append(f"minimum     loss {surface.loss[index]:.4g} at {where}; maximum "
                         f"{np.nanmax(np.where(finite, surface.loss, np.nan)):.4g}")
        if surface.nonfinite:
            lines.append(f"non-finite  {surface.nonfinite} computed point(s) have a NaN or infinite loss")
    return "\n".join(lines)


OPERATOR_TEXT = {"hessian": "the Hessian", "ggn": "the generalized Gauss-Newton matrix J'H_out J",
                 "fisher": "the empirical Fisher (mean of per-sample gradient outer products)"}


def describe_hessian(result: HessianResult) -> str:
    """A Hessian file: what was measured, how far it got, each eigenvalue and whether it converged."""
    a = result.arrays
    done = result.done
    status = result.status if not result.partial else f"partial ({int(done.sum())} of {done.size} measured; " \
                                                       f"{result.status})"
    lines = [f"file        {result.path}",
             f"hessian     {result.label} ({result.attrs.get('run_file') or result.attrs.get('weights_file')}); "
             f"{result.attrs.get('images_used') or str(result.attrs.get('images')) + ' images'}, BN "
             f"{result.attrs.get('bn')}, parameters {result.attrs.get('params', 'all')}",
             f"operator    {OPERATOR_TEXT.get(str(result.attrs.get('operator', 'hessian')), result.attrs.get('operator'))}"
             + (f"; Lanczos basis of {int(a['basis_vectors'].max())} vectors, thick-restarted "
                f"{int(a['restarts'].sum())} times in all" if "restarts" in a and a["restarts"].sum() else ""),
             f"status      {status}", "",
             f"{'lr':>10}  {'epoch':>5}  {'top eigenvalues':>30}  {'converged':>9}  {'HVPs (eig/trace/dens)':>22}"]
    converged = result.converged
    for i, lr in enumerate(a["lrs"]):
        for j, epoch in enumerate(a["epochs"]):
            if not done[i, j]:
                lines.append(f"{lr:>10g}  {int(epoch):>5}  {'not measured':>30}")
                continue
            values = ", ".join(f"{v:.4g}" for v in a["eigenvalues"][i, j] if np.isfinite(v))
            ok = "yes" if converged is None or converged[i, j].all() else \
                f"NO ({int((~converged[i, j]).sum())})"
            counts = "/".join(str(int(a[name][i, j])) if name in a else "-"
                              for name in ("eigen_hvps", "trace_hvps", "density_hvps"))
            lines.append(f"{lr:>10g}  {int(epoch):>5}  {values:>30}  {ok:>9}  {counts:>22}")
            if "trace" in a and np.isfinite(a["trace"][i, j]):
                lines.append(f"{'':>10}  {'':>5}  trace {a['trace'][i, j]:.4g} +- {a['trace_stderr'][i, j]:.2g}")
    if converged is not None and not converged[done].all():
        lines.append("            NO: an eigenvalue's error bound stayed above tol x |value| within max_steps "
                     "(see /error_bounds); rerun with a larger --max-steps")
    return "\n".join(lines)
