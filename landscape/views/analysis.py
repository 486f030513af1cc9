"""Numbers derived from stored runs: loss envelopes, smoothing, summaries (numpy only, no torch).

The envelope of a run file is, at every step, the minimum and maximum loss over its learning-rate
runs and their difference (report 004's band and Figure 13's range). Every function ignores NaN
(diverged runs, steps not reached yet) without warnings: a step where all runs are NaN gives NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape.files.run_file import Run


@dataclass
class Envelope:
    """Per-step band over runs: `steps` [S'], and `low`, `high`, `range` [S'] (NaN where no run has a value)."""

    steps: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def range(self) -> np.ndarray:
        return self.high - self.low


def envelope(losses: np.ndarray, *, smooth: int = 1, stride: int = 1) -> Envelope:
    """Min and max over axis 0 of `losses` [R, S], after optional per-run smoothing, every `stride` steps."""
    losses = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    if smooth > 1:
        losses = moving_average(losses, smooth)
    steps = np.arange(losses.shape[1])[::stride]
    losses = losses[:, ::stride]
    return Envelope(steps=steps, low=np.fmin.reduce(losses, axis=0), high=np.fmax.reduce(losses, axis=0))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last axis, NaN-aware (mean of the finite values in each window).

    The first `window - 1` steps average what is there so far, so the curve starts at step 0.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0), axis=-1)
    counts = np.cumsum(finite, axis=-1)
    sums[..., window:] = sums[..., window:] - sums[..., :-window]
    counts[..., window:] = counts[..., window:] - counts[..., :-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass
class ProbeBands:
    """One run's probes as bands over the multipliers: per probed step, min and max of each measure."""

    steps: np.ndarray
    loss_low: np.ndarray
    loss_high: np.ndarray
    grad_low: np.ndarray
    grad_high: np.ndarray
    beta: np.ndarray


def probe_bands(run: Run, index: int) -> ProbeBands:
    """Bands over the multipliers of run `index` of a file with probes (Santurkar et al., Fig. 4)."""
    probe = run.probe
    loss, grad = probe["loss"][index], probe["grad_dist"][index]  # [P, J]
    return ProbeBands(steps=probe["step"], loss_low=np.fmin.reduce(loss, axis=1), loss_high=np.fmax.reduce(loss, axis=1),
                      grad_low=np.fmin.reduce(grad, axis=1), grad_high=np.fmax.reduce(grad, axis=1),
                      beta=probe["beta"][index])


def probe_medians(run: Run) -> list[tuple[float, float, float]]:
    """Per run: medians over probes of the loss variation (max - min), the largest gradient distance, beta."""
    out = []
    for r in range(len(run.lrs)):
        b = probe_bands(run, r)
        out.append((finite_median(b.loss_high - b.loss_low), finite_median(b.grad_high), finite_median(b.beta)))
    return out


def finite_median(values: np.ndarray) -> float:
    """Median of the finite values; NaN if there are none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def run_label(run: Run, others: list[Run] | None = None) -> str:
    """A short label for plots: the model name, plus the file stem where model names collide."""
    label = run.model
    if others and sum(o.model == run.model for o in others) > 1:
        label = f"{label} ({run.path.stem})"
    return label


def best_accuracy(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Best test accuracy per run and the epoch (from 1) it was reached; NaN / 0 for runs without a value."""
    acc = run.epoch["test_acc"]
    if acc.shape[1] == 0:
        return np.full(acc.shape[0], np.nan), np.zeros(acc.shape[0], dtype=int)
    filled = np.where(np.isfinite(acc), acc, -np.inf)
    best_epoch = np.argmax(filled, axis=1)  # the first epoch reaching the best
    best = filled[np.arange(acc.shape[0]), best_epoch]
    return np.where(np.isfinite(best), best, np.nan), np.where(np.isfinite(best), best_epoch + 1, 0)


def final_accuracy(run: Run) -> np.ndarray:
    """Test accuracy after the last completed epoch, per run (NaN before the first epoch ends)."""
    acc = run.epoch["test_acc"]
    return acc[:, -1] if acc.shape[1] else np.full(acc.shape[0], np.nan)


def check_errors(run: Run) -> tuple[float, float] | None:
    """Median and worst relative error of the sharpness estimates against the converged checks at the same steps
    (every tracked eigenvalue of every run); None without checks."""
    sharp = run.sharpness
    if sharp is None or "check_top" not in sharp or not len(sharp.get("check_step", [])):
        return None
    where = np.searchsorted(sharp["step"], sharp["check_step"])
    estimate = sharp["top"][:, where]  # [R, C, k]
    truth = sharp["check_top"]
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.abs(estimate - truth) / np.abs(truth)
    error = error[np.isfinite(error)]
    return (float(np.median(error)), float(error.max())) if error.size else None


def stability_threshold(config: dict, lr: float) -> float | None:
    """The edge of stability at rate `lr` (Cohen et al. 2021): 2/lr for SGD, (2 + 2b)/lr with heavy-ball momentum
    b, (2 + 2b)/(lr (1 + 2b)) with Nesterov; None for Adam-family optimizers, where it does not apply."""
    if config.get("optimizer") != "sgd":
        return None
    b = float(config.get("momentum") or 0.0)
    if config.get("nesterov") and b:
        return (2 + 2 * b) / (lr * (1 + 2 * b))
    return (2 + 2 * b) / lr


def threshold_formula(config: dict) -> str:
    """The threshold's formula in words, as `stability_threshold` computes it."""
    if config.get("optimizer") != "sgd":
        return f"none for {config.get('optimizer')} (adaptive steps: 2/lr does not apply)"
    b = float(config.get("momentum") or 0.0)
    if not b:
        return "2/lr"
    return f"(2 + 2b)/(lr (1 + 2b)), Nesterov b={b:g}" if config.get("nesterov") else f"(2 + 2b)/lr, b={b:g}"


def fmt_pct(value: float) -> str:
    """A fraction as a percentage with two decimals, '-' for NaN."""
    return "-" if not np.isfinite(value) else f"{100 * value:.2f}%"


# measure -> how it is read from a run file; each gives one value per (run, step) or per (run, probe)
SMOOTHNESS_MEASURES = {
    "across-rate loss range": "max - min training loss over the learning rates at each step (report 004, Fig. 13)",
    "gradient predictiveness": "largest ||grad(p_j) - grad(w)|| along the step, per probe (Santurkar et al.)",
    "relative gradient predictiveness": "the same divided by ||grad(w)||",
    "beta-smoothness": "max_j ||grad(p_j) - grad(w)|| / ||p_j - w||, per probe",
    "sharpness": "top Hessian eigenvalue, per measurement (Cohen et al.)",
}


def smoothness_values(run: Run) -> dict[str, np.ndarray]:
    """Every smoothness measure the file holds, as a flat array of values (all rates, all steps or probes)."""
    out = {"across-rate loss range": envelope(run.train_loss).range} if len(run.lrs) > 1 else {}
    if run.probe is not None and len(run.probe["step"]):
        largest = np.fmax.reduce(run.probe["grad_dist"], axis=2)  # [R, P]
        out["gradient predictiveness"] = largest.ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            out["relative gradient predictiveness"] = (largest / run.probe["grad_norm"]).ravel()
        out["beta-smoothness"] = run.probe["beta"].ravel()
    if run.sharpness is not None and len(run.sharpness["step"]):
        out["sharpness"] = run.sharpness["top"][:, :, 0].ravel()
    return {k: v[np.isfinite(v)] for k, v in out.items()}


@dataclass
class Comparison:
    """One measure of a plain model against its BatchNorm variant, by the median and by the maximum."""

    measure: str
    plain: tuple[float, float]  # (median, max)
    batchnorm: tuple[float, float]

    def smoother(self, which: int) -> str:
        """'BatchNorm', 'plain' or 'tie' by the median (0) or the maximum (1); smaller is smoother."""
        a, b = self.plain[which], self.batchnorm[which]
        if not (np.isfinite(a) and np.isfinite(b)) or np.isclose(a, b, rtol=1e-9, atol=0):
            return "tie"
        return "BatchNorm" if b < a else "plain"


def compare_smoothness(plain: Run, batchnorm: Run) -> list[Comparison]:
    """Every measure both files hold, plain against BatchNorm, by median and maximum over steps, probes and rates."""
    a, b = smoothness_values(plain), smoothness_values(batchnorm)
    out = []
    for measure in SMOOTHNESS_MEASURES:
        if measure in a and measure in b and a[measure].size and b[measure].size:
            out.append(Comparison(measure, (float(np.median(a[measure])), float(a[measure].max())),
                                  (float(np.median(b[measure])), float(b[measure].max()))))
    return out


LEARNED_SHARE = 0.05  # a final training loss within 5% of ln(classes) is chance level: the model did not learn
FEW_STEPS, FEW_PROBES = 200, 10


def did_not_learn(run: Run) -> float | None:
    """The final training loss when every rate of the run ends within LEARNED_SHARE of ln(classes), else None."""
    classes = int(run.attrs.get("num_classes") or 10)
    losses = run.epoch.get("train_loss")
    if losses is None or not losses.shape[1]:
        return None
    finals = []
    for row in losses:
        finite = row[np.isfinite(row)]
        if finite.size:
            finals.append(float(finite[-1]))
    if finals and all(at_chance(value, classes) for value in finals):
        return min(finals)
    return None


def run_cautions(run: Run, label: str | None = None) -> list[str]:
    """Why what one run shows cannot be trusted as it stands, one sentence each (none: nothing stands out)."""
    label = label or run.model
    cautions = []
    final = did_not_learn(run)
    if final is not None:
        classes = int(run.attrs.get("num_classes") or 10)
        cautions.append(f"{label} did not learn: its training loss ends at {final:.3f}, within "
                        f"{100 * LEARNED_SHARE:.0f}% of ln({classes}) = {np.log(classes):.3f} (chance level), so a "
                        f"flat landscape there says nothing about smoothness")
    if run.steps < FEW_STEPS:
        cautions.append(f"{label} trained only {run.steps} steps (fewer than {FEW_STEPS})")
    if run.probe is not None and 0 < len(run.probe["step"]) < FEW_PROBES:
        cautions.append(f"{label} has only {len(run.probe['step'])} probes (fewer than {FEW_PROBES})")
    if "quick" in run.path.parts:
        cautions.append(f"{label} is from the quick preset (narrower, shorter, fewer images than the report)")
    return cautions


def trust_warnings(plain: Run, batchnorm: Run) -> list[str]:
    """Why a comparison of two runs cannot be trusted, one sentence each (none: it can)."""
    return run_cautions(plain) + run_cautions(batchnorm) + [
        "one seed each: a difference may be seed-to-seed noise (repeat with other --seed values)"]


RANGE_CAVEAT = ("the range across rates mostly measures how differently the rates learn (a large rate drops the loss "
                "sooner), not only how rough the landscape is")


def chance_loss(classes: int) -> float:
    """The cross-entropy of a model that has learned nothing: ln(classes)."""
    return float(np.log(classes))


def at_chance(loss: float, classes: int) -> bool:
    """A loss within LEARNED_SHARE of chance: the model there has not learned."""
    return bool(np.isfinite(loss) and abs(loss - chance_loss(classes)) <= LEARNED_SHARE * chance_loss(classes))


def batchnorm_pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(plain, BatchNorm) pairs among `runs`: vgg with vgg_bn or vgg_bn_fc, a ResNet with --norm none against bn,
    the other options equal where both give them."""
    def key(run: Run) -> tuple:
        config = dict(run.config)
        model = str(config.get("model", ""))
        config["model"] = model.replace("_bn_fc", "").replace("_bn", "")
        config.pop("norm", None)
        return tuple(sorted((k, json_key(v)) for k, v in config.items()
                            if k not in ("data_root", "device", "engine", "precision", "compile", "channels_last")))

    def has_batchnorm(run: Run) -> bool:
        model = str(run.config.get("model", ""))
        return "_bn" in model or (model.startswith("resnet") and run.config.get("norm", "bn") == "bn")

    pairs = []
    for plain in (r for r in runs if not has_batchnorm(r)):
        for normed in (r for r in runs if has_batchnorm(r)):
            if key(plain) == key(normed):
                pairs.append((plain, normed))
    return pairs


def json_key(value):
    return tuple(value) if isinstance(value, list) else value
