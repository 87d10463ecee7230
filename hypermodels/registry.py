"""The one place a backbone name maps to a spec: `Backbones`, the backbones of one run.

Three kinds of names resolve here, and only here: the hand-described entries of
``BACKBONES`` (`hypermodels.backbones.builtin`; the tests are parametrized over them,
so a new entry is tested the moment it is added); ``keras:NAME`` for any
``keras.applications`` model, described from the model itself on first use
(`hypermodels.backbones.applications`); and a run's backbones of its own from
``.keras`` files (`hypermodels.backbones.own`), which only that run's value holds.

A `Backbones` is a value made from a run's config (`RunConfig.backbone_specs`) and
passed where models are built: loading one run changes nothing another run sees.
Only a ``keras:NAME`` asks Keras: a run of built-ins resolves without loading TensorFlow
(`cxr-tuner space`).
"""

from __future__ import annotations

import dataclasses

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
from cxr_tuner.hypermodels.backbones.spec import KERAS_PREFIX, BackboneSpec, file_safe


@dataclasses.dataclass(frozen=True)
class Backbones:
    """The backbones one run may use: the built-ins, ``keras:NAME`` and the run's own.

    Attributes:
        own: The run's backbones of its own (its space file's ``[backbones]``).
        unavailable: ``(name, reason)`` of a stored run's own backbones whose file is gone
            or changed: :meth:`get` raises the reason, when something needs the backbone
            (commands that only read saved models go on without it).
    """

    own: tuple[BackboneSpec, ...] = ()
    unavailable: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        for spec in self.own:
            if spec.name in BACKBONES or spec.name.startswith(KERAS_PREFIX):
                raise UserError(f"backbone {spec.name!r}: that name is the registry's; choose another name.")

    def get(self, name: str) -> BackboneSpec:
        """The spec of ``name`` (``keras:NAME`` specs are described on first use, then cached per process).

        Raises:
            UserError: If no backbone has that name (the message lists the known ones),
                or the run's own backbone of that name cannot be used now (why).
        """
        if name in BACKBONES:
            return BACKBONES[name]
        own = {spec.name: spec for spec in self.own}
        if name in own:
            return own[name]
        if name.startswith(KERAS_PREFIX):
            from cxr_tuner.hypermodels.backbones.applications import keras_backbone  # Keras: only a keras: name asks it

            return keras_backbone(name.removeprefix(KERAS_PREFIX))
        if name in dict(self.unavailable):
            raise UserError(dict(self.unavailable)[name])
        raise UserError(
            f"Unknown backbone {name!r}. Known backbones: {', '.join(self.names())}, or keras:NAME for any "
            "keras.applications model (`cxr-tuner backbones` lists them with their sizes, "
            "`cxr-tuner backbones --keras` the keras: ones)."
        )

    def names(self) -> list[str]:
        """The built-in names in registry order, then the run's own."""
        return [*BACKBONES, *(spec.name for spec in self.own)]

    def of_model(self, model_name: str) -> str | None:
        """The backbone name of one of our models, named ``cxr_<file_safe(backbone)>``; None for another model."""
        if not model_name.startswith("cxr_"):
            return None
        safe = model_name.removeprefix("cxr_")
        for name in self.names():
            if file_safe(name) == safe:
                return name
        app = safe.removeprefix(file_safe(KERAS_PREFIX))
        if safe == app:
            return None
        from cxr_tuner.hypermodels.backbones.applications import keras_application_names

        if app in keras_application_names():
            return KERAS_PREFIX + app
        return None


BUILT_IN = Backbones()
"""The backbones of a run without its own: the built-ins and ``keras:NAME``."""


def get_backbone(name: str) -> BackboneSpec:
    """``BUILT_IN.get(name)``: a built-in or ``keras:NAME`` spec (a run's own are in its ``backbone_specs``)."""
    return BUILT_IN.get(name)


def backbone_names() -> list[str]:
    """Names of every built-in backbone, in registry order."""
    return list(BACKBONES)
