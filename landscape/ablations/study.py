"""Studies: a spec's `[study]` section, the claims of a paper it checks, and the verdict on each (no torch).

    [study]
    question = "Do large-batch methods find sharper minima that generalize worse?"
    paper = "Keskar et al. 2017, On Large-Batch Training for Deep Learning"
    seeds = 3                                   # `ablate run`'s default --seeds
    measure_options = { steps = 5 }             # `ablate measure`'s defaults for steps, samples, draws, bound,
                                                # tolerance (the command line overrides them)
    line = { axis = "batch_size", a = 64, b = 1024 }  # the 1D line between two cells' first seeds (optional)
    measures = ["jiang_mag", "hessian", "gap"]  # `ablate measure`'s default --measures
    curves = ["barrier_test_acc"]               # measures drawn against the (first) axis, mean and interval (optional)
    images = 512                                # `ablate measure`'s default --images (and test_images)
    [[study.claims]]
    claim = "Large-batch training converges to sharper minimizers."
    source = "Table 2"
    kind = "difference"                         # high minus low group along `axis`
    axis = "batch_size"
    low = 64
    high = 1024
    measure = "jiang_mag_sharpness"
    expect = "higher"                           # the paper's direction: higher or lower
    [[study.claims]]
    kind = "correlation"                        # Kendall tau of `measure` with `target` over every model
    measure = "pacbayes_mag_flatness"
    target = "gap_acc"
    expect = "positive"                         # positive or negative
    [[study.claims]]
    kind = "level"                              # the mean of `measure` at one value of `axis` against `threshold`
    axis = "branch_epoch"
    at = 4
    measure = "barrier_test_acc"
    threshold = 0.02
    expect = "below"                            # below or above

The verdict rule, stated on every finding before its numbers: only models that met their training criterion
enter (those that missed it are left out and counted; with more than a quarter missing, every verdict is
inconclusive); the 95% interval of the statistic (Welch's t
interval of the difference of group means; a percentile bootstrap of Kendall's tau; a t interval of one group's
mean minus the threshold) **agrees** when it excludes 0 on the paper's side, **disagrees** when it excludes 0 on the
other side, and is **inconclusive** when it includes 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


STUDY_KEYS = {"question", "paper", "design", "seeds", "measures", "images", "test_images", "measure_options",
              "line", "curves", "claims"}
MEASURE_OPTION_KEYS = {"steps", "samples", "draws", "bound", "tolerance"}  # what a study may set for ablate measure
CLAIM_KEYS = {"claim", "source", "kind", "axis", "low", "high", "at", "threshold", "measure", "target", "expect"}
KINDS = {"difference": ("higher", "lower"), "correlation": ("positive", "negative"), "level": ("above", "below")}
VERDICT_RULE = (
    "Only models that met their training criterion enter (those that missed it are excluded and counted); if more "
    "than a quarter of the models missed it, the design was not met and every verdict is **inconclusive**. For "
    "each claim, the 95% interval of its statistic (Welch's t interval for a difference of group means over seeds; "
    "a percentile bootstrap over models, 2,000 resamples, for Kendall's tau; Student's t interval of one group's "
    "mean minus a stated threshold for a level) gives "
    "**agrees** when it excludes 0 on the paper's side, **disagrees** when it excludes 0 on the other side, and "
    "**inconclusive** when it includes 0.")


@dataclass
class Claim:
    """One claim of the paper and how the study tests it."""

    claim: str
    source: str
    kind: str
    measure: str
    expect: str
    axis: str = ""
    low: object = None
    high: object = None
    at: object = None  # a level: the axis value whose models' mean is compared with `threshold`
    threshold: float = 0.0
    target: str = "gap_acc"


@dataclass
class Study:
    """The question, the paper, the defaults of `ablate run` / `ablate measure`, and the claims."""

    question: str
    paper: str
    design: str = ""
    seeds: int = 1
    measures: tuple[str, ...] = ()
    images: int = 0  # 0: ablate measure's own default
    test_images: int = 0
    measure_options: dict = field(default_factory=dict)  # steps, samples, draws, bound, tolerance
    line: dict = field(default_factory=dict)  # axis, a, b: the 1D line between two cells' first seeds (ablations/line)
    curves: tuple[str, ...] = ()  # measures drawn against the first axis (mean and interval over seeds)
    claims: list[Claim] = field(default_factory=list)


def parse_study(raw, axes: list[str], fail) -> Study:
    """The `[study]` table of a spec, checked; errors through `fail(key, problem)` name the line and key."""
    if not isinstance(raw, dict):
        raise fail("study", "must be a table ([study])")
    for key in raw:
        if key not in STUDY_KEYS:
            raise fail(key, f"unknown study key; known keys are {', '.join(sorted(STUDY_KEYS))}")
    for key in ("question", "paper"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise fail("study", f"a study needs {key} = \"...\"")
    for key in ("seeds", "images", "test_images"):
        value = raw.get(key, 1 if key == "seeds" else 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "seeds" else 0):
            raise fail(key, "must be a whole number" + (" of at least 1" if key == "seeds" else ", 0 or more"))
    measures = raw.get("measures", [])
    if not isinstance(measures, list) or not all(isinstance(m, str) for m in measures):
        raise fail("measures", "must be a list of measure groups, e.g. [\"pacbayes\", \"gap\"]")
    curves = raw.get("curves", [])
    if not isinstance(curves, list) or not all(isinstance(m, str) for m in curves) or (curves and not axes):
        raise fail("curves", "must be a list of measure names (columns of the measures table), in a spec with axes")
    options = raw.get("measure_options", {})
    if not isinstance(options, dict) or any(key not in MEASURE_OPTION_KEYS for key in options) or \
            any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in options.values()):
        raise fail("measure_options", f"must be a table of numbers, keys among {', '.join(sorted(MEASURE_OPTION_KEYS))}")
    line = raw.get("line", {})
    if line and (not isinstance(line, dict) or set(line) != {"axis", "a", "b"} or line["axis"] not in axes):
        raise fail("line", f"must be {{ axis = ..., a = ..., b = ... }}, axis one of the spec's axes ({', '.join(axes)})")
    claims = [parse_claim(entry, axes, fail, index) for index, entry in enumerate(raw.get("claims", []))]
    if not claims:
        raise fail("study", "a study needs at least one [[study.claims]] entry: what the paper claims")
    return Study(question=raw["question"], paper=raw["paper"], design=str(raw.get("design", "")),
                 seeds=int(raw.get("seeds", 1)), measures=tuple(measures), images=int(raw.get("images", 0)),
                 test_images=int(raw.get("test_images", 0)), measure_options=dict(options), line=dict(line),
                 curves=tuple(curves), claims=claims)


def parse_claim(entry, axes: list[str], fail, index: int) -> Claim:
    if not isinstance(entry, dict):
        raise fail("claims", "each claim is a table ([[study.claims]])", index)
    for key in entry:
        if key not in CLAIM_KEYS:
            raise fail(key, f"unknown claim key; known keys are {', '.join(sorted(CLAIM_KEYS))}", index)
    for key in ("claim", "source", "measure"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise fail("claims", f"claim {index + 1} needs {key} = \"...\"", index)
    kind = entry.get("kind")
    if kind not in KINDS:
        raise fail("kind", f"claim {index + 1}: kind must be one of {', '.join(KINDS)}", index)
    if entry.get("expect") not in KINDS[kind]:
        raise fail("expect", f"claim {index + 1}: a {kind} expects {' or '.join(KINDS[kind])}", index)
    if kind == "difference":
        if entry.get("axis") not in axes:
            raise fail("axis", f"claim {index + 1}: axis must be one of the spec's axes ({', '.join(axes)})", index)
        if "low" not in entry or "high" not in entry:
            raise fail("claims", f"claim {index + 1}: a difference needs low = and high = (two values of the axis)",
                       index)
    if kind == "level":
        if entry.get("axis") not in axes or "at" not in entry:
            raise fail("axis", f"claim {index + 1}: a level needs axis = (one of {', '.join(axes)}) and at = (its "
                               f"value)", index)
        threshold = entry.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise fail("threshold", f"claim {index + 1}: a level needs threshold = a number", index)
    return Claim(**{k: v for k, v in entry.items()})


@dataclass
class Verdict:
    """The outcome of one claim: the statistic, its interval, the models it used, and the verdict."""

    claim: Claim
    statistic: float
    interval: tuple[float, float]
    models: int
    verdict: str
    detail: str = ""


MISSED_SHARE = 0.25  # more models than this share missing their criterion: the design was not met


def decide(interval: tuple[float, float], expect_positive: bool, design_not_met: bool) -> str:
    """The verdict rule (VERDICT_RULE)."""
    low, high = interval
    if design_not_met or not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > 0 or high < 0:
        return "agrees" if (low > 0) == expect_positive else "disagrees"
    return "inconclusive"


def welch_interval(high: np.ndarray, low: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch's t interval of mean(high) - mean(low) (NaN with fewer than 2 points on a side)."""
    from scipy.stats import t

    if len(high) < 2 or len(low) < 2:
        return float("nan"), float("nan")
    va, vb = high.var(ddof=1) / len(high), low.var(ddof=1) / len(low)
    difference, se = high.mean() - low.mean(), np.sqrt(va + vb)
    if se == 0:
        return difference, difference
    dof = (va + vb) ** 2 / (va ** 2 / (len(high) - 1) + vb ** 2 / (len(low) - 1))
    half = t.ppf(0.5 + level / 2, dof) * se
    return float(difference - half), float(difference + half)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean (NaN with fewer than 2 points)."""
    from scipy.stats import t

    if len(values) < 2:
        return float("nan"), float("nan")
    half = t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def judge(claim: Claim, values: dict[str, np.ndarray], info: dict[str, np.ndarray], met: np.ndarray,
          not_the_design: str = "") -> Verdict:
    """One claim over the models of a measures table: `values` measure -> [C], `info` axis -> [C] text, `met` [C]
    True where the model met its criterion; `not_the_design`: why these models are not the study's design (then
    the verdict is inconclusive whatever the numbers)."""
    from landscape.ablations.correlation import bootstrap_interval, kendall

    missed = int((~met).sum())
    x = values.get(claim.measure)
    if x is None:
        return Verdict(claim, np.nan, (np.nan, np.nan), 0, "inconclusive", f"{claim.measure} was not measured")
    if claim.kind == "difference":
        axis = info.get(claim.axis, np.array([""] * len(x)))
        groups = [x[(axis == format_axis(side)) & met & np.isfinite(x)] for side in (claim.high, claim.low)]
        statistic = float(groups[0].mean() - groups[1].mean()) if all(len(g) for g in groups) else np.nan
        interval = welch_interval(*groups)
        detail = (f"{claim.axis}={format_axis(claim.high)}: {summary(groups[0])}; "
                  f"{claim.axis}={format_axis(claim.low)}: {summary(groups[1])}")
        models = sum(len(g) for g in groups)
    elif claim.kind == "level":
        axis = info.get(claim.axis, np.array([""] * len(x)))
        group = x[(axis == format_axis(claim.at)) & met & np.isfinite(x)]
        statistic = float(group.mean() - claim.threshold) if len(group) else np.nan
        interval = tuple(v - claim.threshold for v in t_interval(group))
        detail = f"{claim.axis}={format_axis(claim.at)}: {summary(group)}, threshold {claim.threshold:g}"
        models = len(group)
    else:
        y = values.get(claim.target)
        if y is None:
            return Verdict(claim, np.nan, (np.nan, np.nan), 0, "inconclusive", f"{claim.target} was not measured")
        keep = met & np.isfinite(x) & np.isfinite(y)
        statistic = kendall(x[keep], y[keep])
        interval = bootstrap_interval(x[keep], y[keep], draws=2000)
        models, detail = int(keep.sum()), ""
    expect_positive = claim.expect in ("higher", "positive", "above")
    verdict = decide(interval, expect_positive, missed > MISSED_SHARE * len(met))
    capped = values.get(claim.measure.rsplit("_", 1)[0] + "_capped")
    if capped is not None and np.nansum(capped[met]) > 0:  # a bound search hit the end of its range
        verdict = "inconclusive"
        detail = (detail + "; " if detail else "") + (f"the search hit the end of its range for "
                                                      f"{int(np.nansum(capped[met]))} model(s): those values are limits")
    if missed:
        detail = (detail + "; " if detail else "") + (f"{missed} of {len(met)} model(s) missed the training criterion "
                                                      f"and were left out")
    if not_the_design:
        verdict = "inconclusive"
        detail = (detail + "; " if detail else "") + not_the_design
    return Verdict(claim, statistic, interval, models, verdict, detail)


def format_axis(value) -> str:
    """An axis value as the measures table stores it (text)."""
    return str(value)


def summary(values: np.ndarray) -> str:
    if not len(values):
        return "no model"
    spread = f" +- {values.std(ddof=1):.3g}" if len(values) > 1 else ""
    return f"mean {values.mean():.4g}{spread} (n={len(values)})"
