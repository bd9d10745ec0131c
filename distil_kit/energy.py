"""Energy from power samples: the arithmetic summary.json's energy fields come from, with no device in it.

A run's power is a list of ``(seconds, watts)`` samples (``power.PowerSampler`` takes them); energy over an
interval is the integral of power over it, by the trapezoid rule, with power at the interval's ends interpolated
between the samples around them (so a window that starts between two samples counts only its own share).
"""

from __future__ import annotations

from bisect import bisect_left

ENERGY_FIELDS = ("energy_j", "energy_to_target_j", "power_avg_w", "power_max_w", "energy_source", "energy_note")


def _power_at(samples: list[tuple[float, float]], t: float) -> float:
    """Power at ``t``, linear between the samples around it (the nearest sample's outside them)."""
    times = [s[0] for s in samples]
    i = bisect_left(times, t)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, p0), (t1, p1) = samples[i - 1], samples[i]
    return p0 + (p1 - p0) * (t - t0) / (t1 - t0) if t1 > t0 else p1


def joules(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """The integral of power over ``[start, end]`` (seconds), by the trapezoid rule over the samples inside it."""
    if end <= start or not samples:
        return 0.0
    inside = [(start, _power_at(samples, start))]
    inside += [s for s in samples if start < s[0] < end]
    inside.append((end, _power_at(samples, end)))
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(inside, inside[1:], strict=False))


def energy_fields(
    samples: list[tuple[float, float]],
    start: float,
    end: float,
    target: float | None,
    source: str | None,
    note: str | None = None,
) -> dict:
    """summary.json's energy fields for training from ``start`` to ``end`` (evaluations included), the target
    reached at ``target`` (None: never); all null, with ``note`` saying why, when there is no source or sample."""
    window = [p for t, p in samples if start <= t <= end]
    if source is None or len(samples) < 2 or end <= start:
        return unmeasured(note or ("no power source" if source is None else "fewer than two power samples"))
    total = joules(samples, start, end)
    return {
        "energy_j": round(total, 3),
        "energy_to_target_j": round(joules(samples, start, target), 3) if target is not None else None,
        "power_avg_w": round(total / (end - start), 3),
        "power_max_w": round(max(window), 3) if window else None,
        "energy_source": source,
        "energy_note": note,
    }


def unmeasured(why: str) -> dict:
    """The energy fields of a run whose power could not be read: null, and why."""
    return {**dict.fromkeys(ENERGY_FIELDS), "energy_note": why}
