"""Comparing two initialisations over seeds: mean ± std, a t-interval of the difference, a verdict.

The verdict is computed from the interval and never says more than it shows: "helps" only when
the whole interval lies above zero, "hurts" only when it lies below, otherwise "no significant
difference"; with one run per side there is no interval and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from bitdet.transfer.fewshot import mean_std

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True)
class Comparison:
    """``treated - control`` over seeds (e.g. upstream-pretrained minus from scratch).

    Attributes:
        metric: what is compared, e.g. ``"AP"`` or ``"top-1 (%)"``.
        treated, control: ``{"mean", "std", "n", "values"}`` of each side.
        diff: mean difference (paired: mean of per-seed differences; else difference of means).
        ci: ``(low, high)`` t-interval of ``diff`` at ``confidence``; ``None`` without one.
        p_value: two-sided p-value of ``diff == 0``; ``None`` without an interval.
        method: ``"paired t"`` (seeds pair the runs), ``"Welch t"``, or ``"none"``.
        confidence: e.g. 0.95.
        sides: how the verdict names the treated and the control side.
    """

    metric: str
    treated: Dict[str, Any]
    control: Dict[str, Any]
    diff: float
    ci: Optional[Tuple[float, float]]
    p_value: Optional[float]
    method: str
    confidence: float
    sides: Tuple[str, str] = ("pretraining", "scratch")

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    @property
    def beyond_spread(self) -> bool:
        """The gain exceeds the larger of the two seed standard deviations (a plainer check)."""
        return self.diff > max(self.treated["std"], self.control["std"])

    def verdict(self, digits: int = 1) -> str:
        """One line computed from the numbers, e.g.
        ``pretraining helps: +4.2 AP (95 % CI +1.3 to +7.1)``."""
        treated, control = self.sides
        f = f"{{:+.{digits}f}}"
        gain = f"{f.format(self.diff)} {self.metric}"
        if self.ci is None:
            return (
                f"no interval from one run per side: {gain} "
                f"(run more seeds before concluding anything)"
            )
        level = f"{self.confidence * 100:.0f} %"
        interval = (
            f"{level} CI {f.format(self.ci[0])} to {f.format(self.ci[1])}, {self.method}, "
            f"n={self.treated['n']}"
        )
        if self.ci[0] > 0:
            return f"{treated} helps: {gain} ({interval})"
        if self.ci[1] < 0:
            return f"{treated} hurts ({control} wins): {gain} ({interval})"
        return f"no significant difference: {gain} ({interval}, includes 0)"

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out.update(
            significant=self.significant, beyond_spread=self.beyond_spread, verdict=self.verdict()
        )
        return out


def _summary(values: Sequence[float]) -> Dict[str, Any]:
    return dict(mean_std(values), values=[float(v) for v in values])


def compare(
    treated: Sequence[float],
    control: Sequence[float],
    metric: str,
    paired: bool,
    confidence: float = 0.95,
    sides: Tuple[str, str] = ("pretraining", "scratch"),
) -> Comparison:
    """Compare two samples of a metric.

    Args:
        treated, control: one value per run (per seed); with ``paired`` the i-th values share
            a seed (same few-shot draw, same data order) and the lists have equal length.
        metric: the unit printed in the verdict.
        paired: t-interval of the per-seed differences; else Welch's t-interval of the
            difference of means (unequal variances).
        confidence: the interval's level.
        sides: names of the treated and the control side in the verdict.

    Returns:
        A :class:`Comparison`; ``ci`` is ``None`` when a side has a single run.

    Raises:
        ValueError: empty input, unequal lengths when paired, non-finite values, or a
            confidence outside (0, 1).
    """
    from scipy import stats

    treated, control = [float(v) for v in treated], [float(v) for v in control]
    if not treated or not control:
        raise ValueError(
            f"compare {metric}: both sides need at least one value "
            f"(got {len(treated)} and {len(control)})"
        )
    if not all(math.isfinite(v) for v in treated + control):
        raise ValueError(f"compare {metric}: non-finite values in {treated} / {control}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: expected a level in (0, 1)")
    if paired and len(treated) != len(control):
        raise ValueError(
            f"compare {metric}: paired runs need equal counts "
            f"(got {len(treated)} and {len(control)})"
        )
    t_sum, c_sum = _summary(treated), _summary(control)
    alpha = 1.0 - confidence
    if paired:
        diffs = [a - b for a, b in zip(treated, control)]
        d = mean_std(diffs)
        diff, n = d["mean"], d["n"]
        if n < 2:
            return Comparison(metric, t_sum, c_sum, diff, None, None, "none", confidence, sides)
        se, df = d["std"] / math.sqrt(n), n - 1
        method = "paired t"
    else:
        diff = t_sum["mean"] - c_sum["mean"]
        if t_sum["n"] < 2 or c_sum["n"] < 2:
            return Comparison(metric, t_sum, c_sum, diff, None, None, "none", confidence, sides)
        va, vb = t_sum["std"] ** 2 / t_sum["n"], c_sum["std"] ** 2 / c_sum["n"]
        se = math.sqrt(va + vb)
        # Welch-Satterthwaite degrees of freedom (the smaller side's n - 1 when both vanish).
        df = (
            (va + vb) ** 2 / (va**2 / (t_sum["n"] - 1) + vb**2 / (c_sum["n"] - 1))
            if se > 0
            else min(t_sum["n"], c_sum["n"]) - 1
        )
        method = "Welch t"
    if se == 0:  # identical differences: the interval is the point itself
        ci, p = (diff, diff), (0.0 if diff != 0 else 1.0)
    else:
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
        ci = (diff - half, diff + half)
        p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Comparison(metric, t_sum, c_sum, diff, ci, p, method, confidence, sides)
