"""The search space as a TOML file a person edits: ``cxr-tuner space`` writes it, ``search --space`` reads it.

Every entry is checked before any work, each problem in one line naming the entry
and what is allowed. What a run searched (hyperparameters, retrain choices, own
backbones) is stored resolved in config.json's ``space``, so a resume with another
space is refused and every later stage rebuilds the same models.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
from pathlib import Path

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import variants
from cxr_tuner.hypermodels.space import DEFAULT_ENTRIES, Entry, Space, is_integer

RUN_SETTINGS = {"image_size": (16, 1024), "batch_size": (1, None), "max_epochs": (1, None), "factor": (2, None)}
"""``[run]`` entries: the run settings a space file may set, with their (lowest, highest) values."""
VARIANTS = tuple(variant.key for variant in variants.VARIANTS)
RETRAIN_DEFAULTS = {"top_k": 3, "seeds": 1, "variants": list(VARIANTS)}
OWN_KEYS = {"file", "preprocess", "cuts", "last_conv_layer"}
_RANGE_KEYS = {"min", "max", "step", "sampling", "default"}
_BOUNDS = {  # name: (lowest allowed, highest allowed, highest is exclusive)
    "unfreeze_depth": (0, None, False), "head_depth": (0, None, False), "head_units": (1, None, False),
    "dropout": (0.0, 1.0, True), "learning_rate": (0.0, None, False),
}


@dataclasses.dataclass(frozen=True)
class SpaceFile:
    """What a space file says. ``settings``: run settings and ``backbones`` it sets; the rest as in config.json."""

    path: Path
    settings: dict
    hyperparameters: dict[str, Entry]
    retrain: dict
    own: dict


def _fail(path: Path, entry: str, problem: str):
    raise UserError(f"{path}: {entry}: {problem}")


def read(path: str | Path) -> SpaceFile:
    """Parses and checks the space file at ``path`` (everything that does not depend on the backbones).

    Raises:
        UserError: One line for the first problem: unreadable TOML, an unknown table or
            entry, a type mismatch, a value out of range, a min above its max.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Space file {path} does not exist; `cxr-tuner space > {path.name}` writes the default one.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"Space file {path} cannot be read ({error}).") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML ({error}); `cxr-tuner space` prints a valid one.") from None
    for table in raw:
        if table not in ("run", "hyperparameters", "retrain", "backbones"):
            _fail(path, table, "unknown table; allowed: [run], [hyperparameters], [retrain], [backbones.NAME]")
        if not isinstance(raw[table], dict):
            _fail(path, table, f"must be a table ([{table}]), not a single value")
    settings = _run_settings(path, raw.get("run", {}))
    hyper = dict(raw.get("hyperparameters", {}))
    if "backbone" in hyper:
        settings["backbones"] = _backbones(path, hyper.pop("backbone"))
    entries = {name: _entry(path, name, value) for name, value in hyper.items()}
    deepest = int((entries.get("head_depth") or DEFAULT_ENTRIES["head_depth"]).highest())
    for name in entries:
        if name.startswith("head_units_") and int(name.rsplit("_", 1)[1]) >= deepest:
            _fail(path, f"hyperparameters.{name}", f"the head has at most {deepest} layer(s) (head_depth's "
                  f"highest value), numbered from 0: head_units_0 .. head_units_{deepest - 1}")
    own = {name: _own(path, name, table) for name, table in raw.get("backbones", {}).items()}
    return SpaceFile(path, settings, entries, _retrain(path, raw.get("retrain", {})), own)


def _run_settings(path: Path, table: dict) -> dict:
    out = {}
    for key, value in table.items():
        if key == "weights":
            if not isinstance(value, str) or not value:
                _fail(path, "run.weights", f'expected "imagenet", "none" or a weights file path, got {_kind(value)}')
            relative = value not in ("imagenet", "none") and not Path(value).expanduser().is_absolute()
            out[key] = str((path.parent / value).resolve()) if relative else value
            continue
        if key not in RUN_SETTINGS:
            _fail(path, f"run.{key}", f"unknown entry; allowed: {', '.join(RUN_SETTINGS)}, weights")
        low, high = RUN_SETTINGS[key]
        if not _is_int(value):
            _fail(path, f"run.{key}", f"expected a whole number, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            _fail(path, f"run.{key}", f"{value} is outside {low}..{high if high is not None else ''}")
        out[key] = value
    return out


def _backbones(path: Path, value) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        _fail(path, "hyperparameters.backbone", "expected a backbone name or a list of names, e.g. "
              '["mobilenet_025", "keras:ConvNeXtTiny"]')
    if len(set(names)) != len(names):
        _fail(path, "hyperparameters.backbone", "a backbone is listed twice")
    return tuple(names)


def _entry(path: Path, name: str, value) -> Entry:
    where = f"hyperparameters.{name}"
    family = "head_units" if name.startswith("head_units_") and name[11:].isdigit() else name
    if family not in DEFAULT_ENTRIES:
        known = ", ".join(["backbone", *DEFAULT_ENTRIES, "head_units_0 .."])
        _fail(path, where, f"unknown hyperparameter; known: {known}")
    integer = is_integer(name)
    check = _is_int if integer else _is_number
    expected = "a whole number" if integer else "a number"

    def number(key: str, item):
        if not check(item):
            _fail(path, where if key is None else f"{where}.{key}", f"expected {expected}, got {_kind(item)}")
        _within(path, where, family, item)
        return item if integer else float(item)  # KerasTuner's choices must share one type: 0 and 0.2 are floats

    if isinstance(value, list):
        if not value:
            _fail(path, where, "an empty list of choices; give at least one value")
        values = [number(None, v) for v in value]
        if len(set(values)) != len(values):
            _fail(path, where, "a choice is listed twice")
        return Entry.choice(values)
    if isinstance(value, dict):
        unknown = set(value) - _RANGE_KEYS
        if unknown:
            _fail(path, f"{where}.{sorted(unknown)[0]}", f"unknown key; a range takes {', '.join(sorted(_RANGE_KEYS))}")
        if "min" not in value or ("max" not in value and name != "unfreeze_depth"):
            _fail(path, where, "a range needs min and max, e.g. {min = 0.0, max = 0.5}")
        low, high = number("min", value["min"]), value.get("max")
        if high is not None:
            number("max", high)
            if low > high:
                _fail(path, where, f"min {low} is above max {high}")
        step = value.get("step")
        if step is not None and (not check(step) or step <= 0):
            _fail(path, f"{where}.step", f"expected {expected} above 0, got {step!r}")
        sampling = value.get("sampling", "linear")
        if sampling not in ("linear", "log", "reverse_log"):
            _fail(path, f"{where}.sampling", f"{sampling!r}; allowed: linear, log, reverse_log")
        if sampling != "linear" and low <= 0:
            _fail(path, where, f"{sampling} sampling needs min above 0, got {low}")
        entry = Entry.range(low, high, step, sampling, value.get("default"))
        if entry.default is not None:
            number("default", entry.default)
            if not entry.contains(entry.default):
                _fail(path, f"{where}.default", f"{entry.default} is outside min {low} .. max {high}")
        return entry
    return Entry.fixed(number(None, value))


def _within(path: Path, where: str, family: str, value) -> None:
    low, high, exclusive = _BOUNDS[family]
    if value < low or (family == "learning_rate" and value <= 0) or (
            high is not None and (value >= high if exclusive else value > high)):
        allowed = {"dropout": "0 <= dropout < 1", "learning_rate": "a learning rate above 0",
                   "head_units": "at least 1 unit"}.get(family, f"at least {low}")
        _fail(path, where, f"{value} is not allowed; {allowed}")


def _retrain(path: Path, table: dict) -> dict:
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in RETRAIN_DEFAULTS.items()}
    for key, value in table.items():
        if key not in RETRAIN_DEFAULTS:
            _fail(path, f"retrain.{key}", f"unknown entry; allowed: {', '.join(RETRAIN_DEFAULTS)}")
        if key == "variants":
            if (not isinstance(value, list) or not value or any(v not in VARIANTS for v in value)
                    or len(set(value)) != len(value)):
                _fail(path, "retrain.variants", f"expected a list of distinct names out of {', '.join(VARIANTS)}, "
                      f"got {value!r}")
        elif not _is_int(value) or value < 1:
            _fail(path, f"retrain.{key}", f"expected a whole number of at least 1, got {value!r}")
        out[key] = value
    return out


def _own(path: Path, name: str, table) -> dict:
    where = f"backbones.{name}"
    if not isinstance(table, dict):
        _fail(path, where, "must be a table with file, preprocess and cuts")
    unknown = set(table) - OWN_KEYS
    if unknown:
        _fail(path, f"{where}.{sorted(unknown)[0]}", f"unknown key; allowed: {', '.join(sorted(OWN_KEYS))}")
    for key in ("file", "preprocess", "cuts"):
        if key not in table:
            _fail(path, where, f"{key} is missing (a backbone of one's own needs file, preprocess and cuts)")
    cuts = table["cuts"]
    if not isinstance(cuts, list) or not all(isinstance(c, str) and c for c in cuts):
        _fail(path, f"{where}.cuts", "expected a list of layer names, from the top down")
    file = Path(str(table["file"])).expanduser()
    file = file if file.is_absolute() else (path.parent / file)
    return {"file": str(file.resolve()), "preprocess": table["preprocess"], "cuts": list(cuts),
            "last_conv_layer": table.get("last_conv_layer")}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _kind(value) -> str:
    return {str: "a string", list: "a list", dict: "a table", bool: "true/false"}.get(type(value), repr(value))


# ---- resolving against the run's backbones -------------------------------------------------------


def resolve(entries: dict[str, Entry], retrain: dict, own: dict, backbones: tuple[str, ...], weights: str,
            image_size: int, source: str | None = None) -> dict:
    """The space config.json stores for a run of ``backbones``: every entry concrete, each own backbone checked.

    Raises:
        UserError: A backbone that does not exist, an own backbone whose file or layers
            do not fit, an unfreeze depth or image size outside what a backbone allows.
    """
    from cxr_tuner.hypermodels.registry import Backbones

    checked = {name: own_spec(name, definition, source) for name, definition in own.items()}
    own_record = {name: record for name, (_, record) in checked.items()}
    known = Backbones(own=tuple(spec for spec, _ in checked.values()))
    where = f"{source}: " if source else ""
    specs = [known.get(name) for name in backbones]
    for spec in specs:
        if image_size < spec.min_size:
            raise UserError(f"{where}image_size {image_size} is below {spec.name}'s smallest input, "
                            f"{spec.min_size} px; use a larger image_size or leave {spec.name} out.")
    merged = {**DEFAULT_ENTRIES, **entries}
    pretrained = [s for s in specs if weights != "none" and s.pretrainable]
    unfreeze = merged["unfreeze_depth"]
    if pretrained:
        fewest = min(pretrained, key=lambda s: len(s.unfreeze_points))
        if unfreeze.kind == "range" and unfreeze.max is None:
            unfreeze = dataclasses.replace(unfreeze, max=len(fewest.unfreeze_points))
            merged["unfreeze_depth"] = unfreeze
            if unfreeze.min > unfreeze.max:
                raise UserError(f"{where}hyperparameters.unfreeze_depth: min {unfreeze.min} is above "
                                f"{fewest.name}'s {len(fewest.unfreeze_points)} cut point(s)")
        for spec in pretrained:
            if unfreeze.highest() > len(spec.unfreeze_points):
                raise UserError(
                    f"{where}hyperparameters.unfreeze_depth: {unfreeze.highest()} is more than {spec.name} "
                    f"allows (its {len(spec.unfreeze_points)} cut point(s): 0 .. {len(spec.unfreeze_points)})")
    elif "unfreeze_depth" in entries:
        raise UserError(f"{where}hyperparameters.unfreeze_depth: none of the backbones "
                        f"({', '.join(backbones)}) starts pretrained here, so nothing can be unfrozen; remove it.")
    return {"hyperparameters": Space(merged).to_json(), "retrain": retrain, "backbones": own_record}


def own_spec(name: str, definition: dict, source: str | None = None) -> tuple:
    """The spec of the backbone of one's own ``definition`` named ``name``, and the definition with its file's digest.

    A ``sha256`` in ``definition`` (a stored run's) must match the file: a changed file
    is not the backbone the run's caches and trials were made with.
    """
    from cxr_tuner.hypermodels.backbones.own import own_backbone

    file = Path(definition["file"])
    if not file.is_file():
        raise UserError(f"{source + ': ' if source else ''}backbones.{name}.file: {file} does not exist; give the path of a .keras file.")
    stat = file.stat()
    digest = _digest(str(file), (stat.st_mtime_ns, stat.st_size))
    if definition.get("sha256") not in (None, digest):
        raise UserError(f"{file} changed since this run started (backbones.{name}); restore it, or start "
                        "over with --overwrite (or another --run-dir).")
    try:
        spec = own_backbone(name, str(file), definition["preprocess"], tuple(definition["cuts"]),
                            definition.get("last_conv_layer"))
    except UserError as error:
        raise UserError(f"{source}: {error}" if source else str(error)) from None
    return spec, {**definition, "sha256": digest}


def run_backbones(own: dict, source: str | None = None):
    """The `hypermodels.registry.Backbones` of a stored run whose space holds ``own`` (its ``backbones`` table).

    An own backbone whose file is gone or changed is unavailable, with the reason, said
    when something needs it: commands that only read saved models go on without it.
    """
    from cxr_tuner.hypermodels.registry import Backbones

    specs, unavailable = [], []
    for name, definition in own.items():
        try:
            specs.append(own_spec(name, definition, source)[0])
        except UserError as error:
            unavailable.append((name, str(error)))
    return Backbones(own=tuple(specs), unavailable=tuple(unavailable))


@functools.lru_cache(maxsize=32)
def _digest(file: str, stamp: tuple[int, int]) -> str:
    """sha256 of ``file``, once per version of it (``stamp``: mtime and size): every config load asks."""
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_record(backbones: tuple[str, ...], weights: str, image_size: int) -> dict:
    """The stored space of a run without a space file."""
    return resolve({}, dict(RETRAIN_DEFAULTS), {}, backbones, weights, image_size)


def differences(saved: dict, mine: dict) -> list[str]:
    """The entries two stored spaces differ in, as ``table.entry: saved -> mine``."""
    out = []
    for table in sorted(set(saved) | set(mine)):
        a, b = saved.get(table) or {}, mine.get(table) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{table}.{key}: {_short(a.get(key))} -> {_short(b.get(key))}")
    return out


def _short(value) -> str:
    if value is None:
        return "(default)"
    if isinstance(value, dict) and "sha256" in value:
        value = {**value, "sha256": value["sha256"][:12]}
    return json.dumps(value, separators=(",", "="))


# ---- writing ---------------------------------------------------------------------------------


def text(config) -> str:
    """The TOML space file of ``config`` (what its search searches), one comment per entry."""
    specs = config.backbone_specs
    hyper = config.search_space().entries
    retrain = config.retrain_choices
    pretrained = [n for n in config.backbones if config.weights != "none" and specs.get(n).pretrainable]
    cuts = ", ".join(f"{n}: {len(specs.get(n).unfreeze_points)}" for n in pretrained)
    lines = [
        "# cxr-tuner search space: what `cxr-tuner search` with the same flags searches.",
        "# Edit it and pass it back with `cxr-tuner search --space FILE`. A hyperparameter takes",
        "# one value (fixed: dropout = 0.2), a list (the choices: head_units = [128, 256]) or a",
        "# range {min, max, step, sampling = \"linear\" | \"log\" | \"reverse_log\", default}.",
        "# An entry left out keeps its default; a flag given beside the file must agree with it.",
        "",
        "[run]",
        "# Side of the square images the models see, in pixels (activations are cached per size).",
        f"image_size = {config.image_size}",
        "# Where pretrained backbones start: \"imagenet\", \"none\" (from scratch) or a weights file.",
        f"weights = {toml_value(config.weights)}",
        "# Images per training step.",
        f"batch_size = {config.batch_size}",
        "# Hyperband: the most epochs one model trains.",
        f"max_epochs = {config.max_epochs}",
        "# Hyperband's reduction factor: each round keeps 1 in factor models, trained factor times longer.",
        f"factor = {config.factor}",
        "",
        "[hyperparameters]",
        "# Registry names (`cxr-tuner backbones`), keras:NAME for any keras.applications model",
        "# (`cxr-tuner backbones --keras`), or the NAME of a [backbones.NAME] table below.",
        f"backbone = {toml_value(list(config.backbones))}",
    ]
    if pretrained:
        lines += ["# Top blocks of a pretrained backbone that train (0: frozen, the head alone); at most",
                  f"# each backbone's cut points ({cuts}). Backbones trained from scratch train whole.",
                  f"unfreeze_depth = {_toml_entry(hyper['unfreeze_depth'])}"]
    else:
        lines += ["# unfreeze_depth: none of these backbones starts pretrained, so nothing is frozen."]
    lines += [
        "# Dense layers of the head, between the pooled features and the output layer.",
        f"head_depth = {_toml_entry(hyper['head_depth'])}",
        "# Units of each head layer (head_units_i exists when i < head_depth); head_units_1 = [...] sets one layer's.",
        f"head_units = {_toml_entry(hyper['head_units'])}",
    ]
    lines += [f"{name} = {_toml_entry(entry)}" for name, entry in hyper.items() if name.startswith("head_units_")]
    lines += [
        "# Dropout rate after each head layer (before the output when the head has none).",
        f"dropout = {_toml_entry(hyper['dropout'])}",
        "# Adam's learning rate.",
        f"learning_rate = {_toml_entry(hyper['learning_rate'])}",
        "",
        "[retrain]",
        "# Distinct configurations retrained after the search (the final model's candidates).",
        f"top_k = {retrain['top_k']}",
        "# Trainings per configuration (seeds seed, seed+1, ...), ranked on their mean.",
        f"seeds = {retrain['seeds']}",
        "# Ways to retrain, tried on the rank-1 configuration; the best on validation retrains all:",
        "# as_searched, lr_decay (rate x0.3 when validation stalls), one_block_more (at 0.3x the rate).",
        f"variants = {toml_value(retrain['variants'])}",
        "",
    ]
    own = config.space.get("backbones") or {}
    for name, definition in own.items():
        lines += [f"[backbones.{name}]", f"file = {toml_value(definition['file'])}",
                  f"preprocess = {toml_value(definition['preprocess'])}", f"cuts = {toml_value(definition['cuts'])}"]
        if definition.get("last_conv_layer"):
            lines.append(f"last_conv_layer = {toml_value(definition['last_conv_layer'])}")
        lines.append("")
    if not own:
        lines += [
            "# A backbone of one's own: a .keras file, its cut layers from the top down (layers with one",
            "# 4-D output that every path passes through), its preprocessing (caffe, tf, torch, raw or",
            "# unit) and optionally its Grad-CAM layer. Then name it in backbone above.",
            "# [backbones.chexnet]",
            '# file = "chexnet_densenet121.keras"',
            '# preprocess = "torch"',
            '# cuts = ["conv5_block15_concat", "conv5_block12_concat", "pool4_pool"]',
            '# last_conv_layer = "relu"',
            "",
        ]
    return "\n".join(lines)


def toml_value(value) -> str:
    """``value`` (a number, string or list of them) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def _toml_entry(entry: Entry) -> str:
    if entry.kind == "fixed":
        return toml_value(entry.value)
    if entry.kind == "choice":
        return toml_value(list(entry.values))
    parts = [f"min = {toml_value(entry.min)}"]
    if entry.max is not None:
        parts.append(f"max = {toml_value(entry.max)}")
    if entry.step is not None:
        parts.append(f"step = {toml_value(entry.step)}")
    if entry.sampling != "linear":
        parts.append(f"sampling = {toml_value(entry.sampling)}")
    if entry.default is not None:
        parts.append(f"default = {toml_value(entry.default)}")
    return "{" + ", ".join(parts) + "}"
