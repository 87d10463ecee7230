"""The classifier's search space as data: each hyperparameter fixed, a range or choices.

:class:`hypermodels.classifier.XrayClassifier` declares its hyperparameters from a
:class:`Space`, keeping the conditional structure in code (``head_units_i`` exists
for ``i < head_depth``, ``unfreeze_depth`` only for pretrained backbones). The
default space is exactly what the classifier searched before spaces existed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # for the hints only: `cxr-tuner space` prints a space without loading TensorFlow
    import keras_tuner

SAMPLINGS = ("linear", "log", "reverse_log")
INTEGERS = ("unfreeze_depth", "head_depth", "head_units")
"""Hyperparameters (and the ``head_units_i`` family) that take whole numbers."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One hyperparameter's domain.

    Attributes:
        kind: ``"fixed"`` (``value``), ``"choice"`` (``values``) or ``"range"``
            (``min`` .. ``max`` with an optional ``step`` and a ``sampling``).
        default: The value KerasTuner reports for inactive or unsampled trials;
            None picks the classifier's own default when it is allowed, else the lowest.
        max: For ``unfreeze_depth``, None means "every cut of the backbone".
    """

    kind: str
    value: object = None
    values: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    sampling: str = "linear"
    default: object = None

    @classmethod
    def fixed(cls, value) -> "Entry":
        return cls("fixed", value=value)

    @classmethod
    def choice(cls, values, default=None) -> "Entry":
        return cls("choice", values=tuple(values), default=default)

    @classmethod
    def range(cls, low, high, step=None, sampling="linear", default=None) -> "Entry":
        return cls("range", min=low, max=high, step=step, sampling=sampling, default=default)

    def allowed(self) -> list:
        """The values it can take: all of them for fixed and choices, the two ends for a range."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.values)
        return [self.min, self.max]

    def lowest(self):
        return min(self.allowed())

    def highest(self):
        return max(self.allowed())

    def contains(self, value) -> bool:
        if self.kind == "range":
            return self.min <= value <= (self.max if self.max is not None else value)
        return value in self.allowed()

    def declare(self, hp: keras_tuner.HyperParameters, name: str, code_default):
        """Declares (or reads) ``name`` on ``hp``; returns its value for this trial."""
        default = self.default if self.default is not None else code_default
        if self.kind == "fixed":
            return hp.Fixed(name, self.value)
        if self.kind == "choice":
            return hp.Choice(name, list(self.values), default=default if default in self.values else self.values[0])
        default = default if self.contains(default) else self.min
        if is_integer(name):
            return hp.Int(name, int(self.min), int(self.max), step=None if self.step is None else int(self.step),
                          sampling=self.sampling, default=int(default))
        return hp.Float(name, float(self.min), float(self.max), step=self.step, sampling=self.sampling,
                        default=float(default))

    def to_json(self) -> dict:
        """The entry as JSON (what config.json stores): only the fields its kind uses."""
        if self.kind == "fixed":
            return {"fixed": self.value}
        if self.kind == "choice":
            return {"choices": list(self.values), **({"default": self.default} if self.default is not None else {})}
        out = {"min": self.min, "max": self.max}
        if self.step is not None:
            out["step"] = self.step
        if self.sampling != "linear":
            out["sampling"] = self.sampling
        if self.default is not None:
            out["default"] = self.default
        return out

    @classmethod
    def from_json(cls, raw: dict) -> "Entry":
        if "fixed" in raw:
            return cls.fixed(raw["fixed"])
        if "choices" in raw:
            return cls.choice(raw["choices"], raw.get("default"))
        return cls.range(raw["min"], raw["max"], raw.get("step"), raw.get("sampling", "linear"), raw.get("default"))


def is_integer(name: str) -> bool:
    """Whether hyperparameter ``name`` takes whole numbers."""
    return name in INTEGERS or name.startswith("head_units_")


DEFAULTS = {"unfreeze_depth": 0, "head_depth": 1, "head_units": 128, "dropout": 0.2, "learning_rate": 1e-3}
"""The classifier's own default value of each hyperparameter."""

DEFAULT_ENTRIES = {
    "unfreeze_depth": Entry.range(0, None),
    "head_depth": Entry.range(0, 3),
    "head_units": Entry.choice((64, 128, 256, 512)),
    "dropout": Entry.range(0.0, 0.5, step=0.1),
    "learning_rate": Entry.range(1e-4, 1e-2, sampling="log"),
}


@dataclasses.dataclass(frozen=True)
class Space:
    """The domains of every hyperparameter except ``backbone`` (the run's backbone list is that one).

    ``entries`` holds ``unfreeze_depth``, ``head_depth``, ``head_units`` (every head
    layer's choices), optionally ``head_units_i`` (layer ``i``'s own), ``dropout``
    and ``learning_rate``.
    """

    entries: Mapping[str, Entry] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ENTRIES))

    def __getitem__(self, name: str) -> Entry:
        return self.entries[name]

    def units(self, layer: int) -> Entry:
        """The domain of head layer ``layer``'s units: its own entry, else the shared ``head_units``."""
        return self.entries.get(f"head_units_{layer}", self.entries["head_units"])

    def max_head_depth(self) -> int:
        return int(self.entries["head_depth"].highest())

    def declare(self, hp: keras_tuner.HyperParameters, name: str):
        """Declares (or reads) hyperparameter ``name`` (``head_units_i`` too) on ``hp``."""
        if name.startswith("head_units_"):
            return self.units(int(name.rsplit("_", 1)[1])).declare(hp, name, DEFAULTS["head_units"])
        return self.entries[name].declare(hp, name, DEFAULTS[name])

    def unfreeze_entry(self, cuts: int) -> Entry:
        """``unfreeze_depth``'s domain for a backbone with ``cuts`` cut points (an open max: all of them)."""
        entry = self.entries["unfreeze_depth"]
        if entry.kind == "range" and entry.max is None:
            return dataclasses.replace(entry, max=cuts)
        return entry

    def to_json(self) -> dict:
        return {name: entry.to_json() for name, entry in self.entries.items()}

    @classmethod
    def from_json(cls, raw: Mapping | None) -> "Space":
        """The space config.json stores (None or empty: the default space)."""
        if not raw:
            return cls()
        return cls({name: Entry.from_json(entry) for name, entry in raw.items()})
