"""How figures, values and durations read in every line and report a user sees.

One place, so a missing figure always reads ``n/a (why)`` and a duration is written the
way the command line takes it.
"""

from __future__ import annotations

import numbers
import re


def number_text(value, spec: str = ".3f", reason: str = "not recorded", unit: str = "") -> str:
    """A figure that may be missing, for any line a user reads: ``format(value, spec)`` or ``n/a (reason)``.

    Every printed or reported figure goes through here (or :func:`value_text`, or
    :func:`figure_text` for a figure with a CI), so a metric, a time
    or a loss that a run never produced reads ``n/a (why)`` instead of stopping the run.

    Args:
        value: The figure; None (or anything that is not a number) is missing.
        spec: Its format spec, e.g. ``".4f"``, ``".2e"``, ``".1%"``.
        reason: Why it would be missing, said after ``n/a``.
        unit: Written after a figure that is there, e.g. ``" s"``, ``" MB"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"n/a ({reason})"
    return format(value, spec) + unit


def value_text(value) -> str:
    """A hyperparameter value as a person reads it: ``0.3``, ``5.3e-04``, ``128``, ``mobilenet_025``."""
    if value is None:
        return number_text(None, reason="no value")
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.1e}"
        return f"{value:.3g}"
    return str(value)


def figure_text(figure: dict | None, reason: str = "not computed") -> str:
    """A ``{"value", "ci95"}`` figure as ``0.912 [0.880, 0.941]``; ``n/a (reason)`` without a value.

    The reason is the figure's own (``"reason"``, e.g. no COVID case in the set), else ``reason``;
    a missing figure (None) reads the same way.
    """
    figure = figure if isinstance(figure, dict) else {}
    text = number_text(figure.get("value"), reason=figure.get("reason") or reason)
    ci = figure.get("ci95")
    if figure.get("value") is None or not ci or len(ci) != 2:
        return text
    return f"{text} [{number_text(ci[0])}, {number_text(ci[1])}]"


# Durations.
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds of ``90s``, ``15m``, ``1h30m``, ``2m30s`` (or a bare number of seconds).

    Raises:
        ValueError: With what is wrong, for one line of the command line's error.
    """
    cleaned = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        found = _DURATION.match(cleaned)
        if not cleaned or not found or not any(found.groups()):
            raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 15m or 1h30m")
        hours, minutes, secs = (float(g) if g else 0.0 for g in found.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all; give a positive duration, e.g. 5m")
    return seconds


def duration_text(seconds: float) -> str:
    """``330`` -> ``5m30s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"
