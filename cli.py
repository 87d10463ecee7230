"""Command line: one click group, one thin command per verb.

Each command only parses flags into library calls; a ``UserError`` becomes one
line on stderr and exit status 1, without a traceback.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import click

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.preprocess import INTENSITIES
from cxr_tuner.search.engine.config import (DATA_DEFAULTS, DEMO_DEFAULTS, MIN_POSITIVE_GROUPS, PRECISIONS, RETRAIN_FROM,
                           RETRAIN_FROM_DEFAULT, SHIFT_OBJECTIVES, TASKS, TUNERS, UNCERTAIN,
                           VAL_SOURCES)


_VERBOSE_HELP = "Show TensorFlow's and absl's start-up messages and warnings."


class _Command(click.Command):
    """A command that takes ``--verbose`` after its name too and sets the process's output once it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--verbose"], is_flag=True, help=_VERBOSE_HELP))
        if self.short_help is None and self.help:  # the whole first line: click cuts it at 45 characters
            self.short_help = self.help.strip().splitlines()[0].rstrip(".")

    def invoke(self, ctx):
        from cxr_tuner.search.engine import console

        verbose = ctx.params.pop("verbose") or ctx.find_root().params.get("verbose", False)
        # Here, not at import: every command (and CliRunner) gets it, importers do not.
        console.quiet_start(verbose, tensorflow=self.needs_tensorflow(ctx))
        return super().invoke(ctx)

    def needs_tensorflow(self, ctx) -> bool:
        """Whether the command loads TensorFlow (silenced, once, before it runs)."""
        return True


class _Listing(_Command):
    """`backbones`: its table is static; only ``--keras`` asks Keras for its applications."""

    def needs_tensorflow(self, ctx) -> bool:
        return bool(ctx.params.get("keras_names"))


class _SpaceListing(_Command):
    """`space`: the built-in backbones' facts are static; a keras:NAME backbone or one's own is asked of Keras."""

    def needs_tensorflow(self, ctx) -> bool:
        from cxr_tuner.search.engine.config import asks_keras

        params = ctx.params
        return asks_keras(params.get("run_dir"), params.get("data"), params.get("space"), params.get("backbones"))


class _Group(click.Group):
    command_class = _Command
    group_class = type  # subgroups are _Groups too

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Group)
@click.version_option(package_name="cxr-tuner", prog_name="cxr-tuner")
@click.option("--verbose", is_flag=True, help=_VERBOSE_HELP + " Also accepted after the command.")
def cli(verbose):
    """Search transfer-learning classifiers for chest X-rays with KerasTuner."""


def _csv(ctx, param, value):
    if value is None:
        return None
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _defaults(setting: str) -> str:
    """``Default: A for the demo, else B.``, from the defaults the code uses (the help cannot drift from them)."""
    def text(value):
        return ", ".join(value) if isinstance(value, (tuple, list)) else str(value)

    demo, data = text(DEMO_DEFAULTS[setting]), text(DATA_DEFAULTS[setting])
    return f"Default: {demo}." if demo == data else f"Default: {demo} for the demo, else {data}."


def _search_options() -> dict:
    """Every flag that defines a search, by parameter name (`search` takes them all, `space` those of the space)."""
    options = [
        click.option("--data", type=click.Path(), default=None,
                     help="Folder of labelled X-rays or a CSV manifest (path,label[,patient_id]), or a "
                          "multi-label file: NIH's Data_Entry_2017.csv, a CheXpert/MIMIC CSV or a multi-hot "
                          "CSV (path,FindingA,FindingB,...). Omit for the built-in synthetic demo data."),
        click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
                     help="multiclass (one class per film) or multilabel (findings, several per film); auto "
                          "decides from the labels and says why. Without --data, multilabel runs the "
                          "multi-label demo. See docs/multilabel.md."),
        click.option("--uncertain", type=click.Choice(UNCERTAIN), default="ones", show_default=True,
                     help="CheXpert/MIMIC uncertain (-1) labels: as positive (U-Ones), negative (U-Zeros) or "
                          "left out of that finding's loss and figures (ignore)."),
        click.option("--views", callback=_csv, default=None, metavar="PA,AP",
                     help="Keep only films of these views (NIH View Position, CheXpert Frontal/Lateral and "
                          "AP/PA, MIMIC ViewPosition). Default: all."),
        click.option("--min-positive-groups", type=click.IntRange(1), default=MIN_POSITIVE_GROUPS,
                     show_default=True,
                     help="A finding with fewer positive patient groups in train, val or test is dropped "
                          "(one line each)."),
        click.option("--run-dir", type=click.Path(file_okay=False), default="runs/demo",
                     show_default=True, help="Run directory; the same one again resumes."),
        click.option("--backbones", callback=_csv, default=None,
                     help="Comma-separated registry names (see `backbones`), or keras:NAME for any keras.applications model. " + _defaults("backbones")),
        click.option("--image-size", type=click.IntRange(16, 1024), default=None,
                     help="Square image side in pixels. " + _defaults("image_size")),
        click.option("--weights", default=None,
                     help="imagenet, none, or a weights file (mobilenet_025's ImageNet file ships with the "
                          "package). " + _defaults("weights")),
        click.option("--tuner", type=click.Choice(TUNERS),
                     default="hyperband", show_default=True),
        click.option("--max-epochs", type=click.IntRange(1), default=None,
                     help="Most epochs for one model. " + _defaults("max_epochs")),
        click.option("--factor", type=click.IntRange(2), default=None,
                     help="Hyperband's reduction factor. " + _defaults("factor")),
        click.option("--max-trials", type=click.IntRange(1), default=20, show_default=True,
                     help="Trial budget of the bayesian and random tuners."),
        click.option("--batch-size", type=click.IntRange(1), default=None, help=_defaults("batch_size")),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Same seed, same split and same trial sequence."),
        click.option("--overwrite", is_flag=True, help="Start over instead of resuming."),
        click.option("--cache-dtype", type=click.Choice(["float32", "float16"]), default="float32",
                     show_default=True,
                     help="Activation cache on disk: float32 is exact, float16 takes half the space."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help="Keras mixed-precision policy the models compute in (softmax and loss stay "
                          "float32); auto: mixed_float16 on GPUs with tensor cores, else float32."),
        click.option("--cache-budget", "cache_budget_gb", type=click.FloatRange(0), default=None, metavar="GB",
                     help="Most GB of cached activations; deeper unfreeze depths beyond it train on images."),
        click.option("--folds", type=click.IntRange(2), default=None, metavar="K",
                     help="Score each trial on K patient-grouped folds of train+val (their mean loss); the "
                          "final model then trains on all of train+val. For small collections."),
        click.option("--intensity", type=click.Choice(INTENSITIES), default=None,
                     help="standardize: each film brought to a typical mean and spread inside the model, so "
                          "how a source exposed and windowed it matters less (docs/shift.md).  "
                          "[default: standardize; a resumed run: its own]"),
        click.option("--shift-copies", type=click.IntRange(0, 8), default=None, metavar="N",
                     help="Re-rendered copies of each training film (other resampling, JPEG, windowing, "
                          "noise, borders, markers); every epoch shows each film as itself or one copy.  "
                          "[default: 2; a resumed run: its own]"),
        click.option("--shift-objective", type=click.Choice(SHIFT_OBJECTIVES), default=None,
                     help="Rank trials on the validation films' class-weighted loss (clean) or on its mean "
                          "with their re-rendered copies' (mixed, which needs --shift-copies).  "
                          "[default: mixed with copies, else clean]"),
        click.option("--val-sources", type=click.Choice(VAL_SOURCES), default="mixed", show_default=True,
                     help="apart: in a class with films from two or more sources (a source column), validation "
                          "takes whole sources, so trials are ranked on transfer to a source they never saw."),
        click.option("--space", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="A TOML search space (`cxr-tuner space` prints the default one): fix, narrow or widen "
                          "any hyperparameter, the image size, batch size, Hyperband's budget and the retrain's "
                          "choices; backbones of one's own. See docs/space.md."),
    ]
    # An option decorator names its parameter only once applied: apply each to a dummy to read it.
    return {option(lambda **kwargs: None).__click_params__[-1].name: option for option in options}


SEARCH_OPTIONS = _search_options()
SPACE_SETTINGS = ("data", "backbones", "image_size", "weights", "max_epochs", "factor", "batch_size", "space")
"""The search flags a space file can hold too (and `data`, whose presence picks the defaults)."""


def search_options(function, names=None):
    """The flags that define a search (a `worker` reads them from the run directory); ``names``: only those."""
    options = [option for name, option in SEARCH_OPTIONS.items() if names is None or name in names]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def _config(options: dict):
    from cxr_tuner.search.engine.config import new_config, shift_settings

    options.update(shift_settings(options["run_dir"], options.get("overwrite", False),
                                  **{k: options.pop(k, None) for k in ("intensity", "shift_copies", "shift_objective")}))
    data = options.pop("data")
    if data is not None:
        data = str(Path(data).resolve())
    return new_config(run_dir=options.pop("run_dir"), data=data, **options)


def _duration(ctx, param, value):
    """``90s``, ``15m``, ``6h``, ``1h30m`` or bare seconds -> seconds (every duration flag takes these)."""
    if value is None:
        return None
    from cxr_tuner.search.figures.text import parse_duration

    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _duration_at_least(seconds: float):
    def parse(ctx, param, value):
        parsed = _duration(ctx, param, value)
        if parsed is not None and parsed < seconds:
            raise click.BadParameter(f"{value!r} is shorter than the least it can be, {seconds:g}s")
        return parsed
    return parse


def _formats(ctx, param, value):
    from cxr_tuner.search.engine.layout import EXPORT_FORMATS

    formats = _csv(ctx, param, value)
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise click.BadParameter(f"{', '.join(unknown) or '(none given)'}: choose from {', '.join(EXPORT_FORMATS)}")
    return formats


def _ensemble(ctx, param, value):
    if value is None or value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter("a count of winners (1, 2, ...) or auto")
    return int(value)


_final_options = [
    click.option("--ensemble", callback=_ensemble, default="auto", show_default=True, metavar="[auto|K]",
                 help="How many of the ranked retrained winners the final model averages: auto (the "
                      "count with the lowest class-weighted validation loss) or a count K (1, 2, ...)."),
    click.option("--operating-point", "point", default=None, metavar="CLASS:sensitivity=X",
                 help="Threshold one class's probability for a target sensitivity (or specificity=X) "
                      "on validation; off for none. Default: COVID:sensitivity=0.95 when there is a "
                      "class COVID. Findings: LABEL:sensitivity=X[,LABEL:...]; every other finding gets "
                      "the threshold of highest Youden's J on validation."),
    click.option("--refit/--no-refit", default=False, show_default=True,
                 help="Train the final model's members again on train+val once every choice is made on "
                      "validation (their configuration, best epoch, ensemble, temperature, threshold); "
                      "measured no better on held-out films, see docs/final-model.md."),
]


def final_options(function):
    """The flags of the final model (ensemble, calibration, operating point)."""
    return functools.reduce(lambda f, option: option(f), reversed(_final_options), function)


_retrain_from_option = click.option(
    "--retrain-from", type=click.Choice(RETRAIN_FROM), default=RETRAIN_FROM_DEFAULT, show_default=True,
    help="Where each winner's retrain starts: scratch (a fresh build) or search (its best-epoch weights from "
         "the search, a fresh optimizer, on while validation improves; about 3x faster, measured no better "
         "calibrated, see docs/final-model.md). --folds trains from scratch.")

_strategy_option = click.option(
    "--strategy", type=click.Choice(["none", "mirrored"]), default="none", show_default=True,
    help="Within each trial: mirrored trains on all of this machine's GPUs "
         "(tf.distribute.MirroredStrategy); one replica on a CPU-only machine.")


@cli.command()
@search_options
@click.option("--no-retrain", is_flag=True,
              help="Stop after the search (no retrain, evaluate, Grad-CAM or export).")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Retrain the winners on augmented images (minutes) instead of on the cached "
                   "activations (seconds); measured no better on cxr3-dev, see docs/final-model.md.")
@click.option("--chief", metavar="HOST:PORT", default=None,
              help="Be the chief of a distributed search: prepare the run directory and caches, "
                   "then serve trials to `worker` processes at HOST:PORT (e.g. 0.0.0.0:8000); "
                   "runs no trial itself.")
@click.option("--worker-timeout", callback=_duration_at_least(6), default="2m", show_default=True,
              metavar="DURATION",
              help="With --chief: how long without a sign of life (90s, 15m, 6h or bare seconds; at least "
                   "6s) a worker counts as dead and its trial goes to another worker.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Trials at once on this machine: N worker processes (KerasTuner's distributed "
                   "mode, this process the chief), each on its share of the cores. On a CPU, 2 "
                   "is faster: one trial's tracing overlaps another's arithmetic.")
@click.option("--time-budget", callback=_duration, default=None, metavar="DURATION",
              help="Finish the whole job within DURATION (90s, 15m, 6h, 1h30m or bare seconds): a short calibration plans "
                   "Hyperband's max epochs (at most --max-epochs) and the retrain, the plan is printed "
                   "before the search, and the search stops at its share. See docs/time-budget.md.")
@click.option("--external", "externals", multiple=True, type=click.Path(), metavar="PATH",
              help="A labelled set from other sources (folder or label file with the run's classes or "
                   "findings), scored after the test split into RUN_DIR/report/external-NAME, its figures "
                   "beside the test split's; repeatable. Checked before the search starts.")
@_retrain_from_option
@_strategy_option
@final_options
def search(no_retrain, augment, chief, worker_timeout, workers, externals, strategy, ensemble, point, refit,
           retrain_from,
           **options):
    """Search the best classifier for the data (resumes an existing run).

    Then retrains the top 3 configurations (the retrain variant chosen on validation),
    averages the best of them (--ensemble), calibrates and sets the operating point on
    validation, evaluates on the test split (and each --external set) with Grad-CAM
    galleries and the acquisition-shift stress test and exports, unless --no-retrain.
    """
    # A --time-budget counts from the process's start (main's), or from here when called in-process.
    started = (click.get_current_context().find_root().obj or {}).get("started") or time.monotonic()
    from cxr_tuner.search.job import run_job

    config = _config(options)
    if chief and strategy != "none":
        click.echo("--strategy applies where trials train: pass it to the workers")
    run_job(config, retrain=not no_retrain, augment=augment, ensemble=ensemble, point=point, refit=refit,
            log=click.echo, externals=tuple(str(Path(path).resolve()) for path in externals), retrain_from=retrain_from,
            chief=chief, worker_timeout=worker_timeout, strategy=strategy, workers=workers, started=started)


@cli.command()
@click.option("--chief", metavar="HOST:PORT", required=True,
              help="Where the chief (`search --chief`) serves, as seen from this machine.")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True,
              help="The chief's run directory, on a filesystem shared with it.")
@click.option("--worker-id", default=None, help="This worker's name. Default: HOSTNAME-PID.")
@click.option("--wait", callback=_duration_at_least(1), default="6h", show_default=True, metavar="DURATION",
              help="How long to wait for the chief to start serving (90s, 15m, 6h or bare seconds; it "
                   "prepares the caches first).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads each operation computes on. Default: TensorFlow's (every core); "
                   "cores / N for N workers on one machine.")
@_strategy_option
def worker(chief, run_dir, worker_id, wait, threads, strategy):
    """Run trials of a distributed search until its chief says it is done.

    The search's settings come from the run directory's config.json, which the
    chief writes before it serves; the split and the caches there are shared.
    """
    from cxr_tuner.search.run import run_worker

    name = run_worker(run_dir, chief, worker_id=worker_id, strategy=strategy, wait=wait, threads=threads,
                      log=click.echo)
    click.echo(f"worker {name}: the search is done")


@cli.command(cls=_SpaceListing)
@functools.partial(search_options, names=SPACE_SETTINGS)
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Print the space this run searched instead (alone: its settings are the run's).")
def space(run_dir, **options):
    """Print, as a TOML file to edit, the search space that `search` with the same flags would search.

    `cxr-tuner space > space.toml`, edit it, then `cxr-tuner search --space space.toml`;
    `cxr-tuner space --run-dir RUN` starts from what an earlier run searched.
    """
    from cxr_tuner.search.engine import space_file
    from cxr_tuner.search.engine.config import load_config, new_config

    if run_dir is not None:
        given = sorted("--" + k.replace("_", "-") for k, v in options.items() if v is not None)
        if given:
            raise UserError(f"--run-dir prints the space the run searched; drop {', '.join(given)} "
                            "(edit the printed file instead).")
        click.echo(space_file.text(load_config(run_dir)), nl=False)
        return
    data = options.pop("data")
    config = new_config(run_dir="-", data=data, **options)
    click.echo(space_file.text(config), nl=False)


@cli.command(cls=_Listing)
@click.option("--keras", "keras_names", is_flag=True,
              help="List the keras:NAME backbones instead: every keras.applications model.")
def backbones(keras_names):
    """List the registered backbones: default input size, smallest size, Grad-CAM layer, weights file.

    Any keras.applications model works too, as keras:NAME (e.g. keras:ConvNeXtTiny);
    --keras lists them.
    """
    from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
    from cxr_tuner.hypermodels.backbones.spec import KERAS_PREFIX

    if keras_names:
        from cxr_tuner.hypermodels.backbones.applications import keras_application_names  # Keras itself

        for name in keras_application_names():
            click.echo(KERAS_PREFIX + name)
        return
    click.echo(f"{'name':<16} {'size':>8} {'(min)':>6}  {'grad-cam layer':<29} weights")
    for spec in BACKBONES.values():
        weights = spec.weight_file(spec.default_size) if spec.pretrainable else "(from scratch only)"
        click.echo(f"{spec.name:<16} size {spec.default_size:>3} (min {spec.min_size:>2})  "
                   f"grad-cam {spec.last_conv_layer:<20} {weights}")
    click.echo(f"and {KERAS_PREFIX}NAME for any keras.applications model (e.g. {KERAS_PREFIX}ConvNeXtTiny; "
               "its cut points are found from its blocks): `cxr-tuner backbones --keras` lists them.")


def _run_config(run_dir):
    from cxr_tuner.search.engine.config import load_config

    return load_config(run_dir)


_run_dir_argument = click.argument("run_dir", type=click.Path(exists=True, file_okay=False))


@cli.command()
@_run_dir_argument
@click.option("--top-k", type=click.IntRange(1), default=None,
              help="How many of the best distinct configurations to retrain. Default: the run's space's (3).")
@click.option("--seeds", type=click.IntRange(1), default=None,
              help="Trainings per configuration (seeds seed, seed+1, ...); ranks on their mean. "
                   "Default: the run's space's (1).")
@click.option("--max-epochs", type=click.IntRange(1), default=None,
              help="Most epochs per training (early stopping usually ends sooner). Default: twice the search's.")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Train on augmented images instead of the cached activations.")
@click.option("--variants/--no-variants", default=True, show_default=True,
              help="Choose on validation how to retrain (as searched, lr decay, one block more) first.")
@_retrain_from_option
def retrain(run_dir, top_k, seeds, max_epochs, augment, variants, retrain_from):
    """Retrain the search's top configurations and rank them on validation."""
    from cxr_tuner.search.final.retrain import retrain as retrain_winners

    summary = retrain_winners(_run_config(run_dir), top_k=top_k, seeds=seeds, max_epochs=max_epochs,
                              augment=augment, choose_variant=variants, log=click.echo, from_=retrain_from)
    click.echo(f"best: {summary['winners'][0]['dir']} (see {_run_config(run_dir).layout.winners_summary})")


@cli.command()
@_run_dir_argument
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Another labelled folder or CSV with the run's class names. Default: the test split.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder. Default: RUN_DIR/report (RUN_DIR/report/external-NAME with --data).")
@click.option("--layer", default=None, help="Grad-CAM layer. Default: the backbone's from the registry.")
@final_options
def evaluate(run_dir, data, out, layer, ensemble, point, refit):
    """Evaluate the final model once: metrics.json, pictures, Grad-CAM galleries, report.md.

    The final model (ensemble, temperature, operating point) is assembled first, on
    the validation split, when the run has none yet or when --ensemble or
    --operating-point is given.
    """
    from cxr_tuner.search.final.assemble import assemble
    from cxr_tuner.search.evaluation.evaluate import evaluate as evaluate_winner

    config = _run_config(run_dir)
    given = click.get_current_context().get_parameter_source
    if not config.layout.has_final() or any(given(name).name != "DEFAULT" for name in ("ensemble", "point", "refit")):
        assemble(config, ensemble=ensemble, point=point, refit=refit, log=click.echo)
    evaluate_winner(config, data=data, out=out, layer=layer, log=click.echo)


@cli.command()
@_run_dir_argument
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the overlays. Default: RUN_DIR/report/gradcam-images.")
@click.option("--class", "class_name", default=None, help="Class to explain. Default: the predicted one.")
@click.option("--layer", default=None, help="Grad-CAM layer. Default: the backbone's from the registry.")
def gradcam(run_dir, images, out, class_name, layer):
    """Write Grad-CAM overlays for images, explained by the run's model."""
    from cxr_tuner.search.delivery.predict import predict_images

    entries = predict_images(run_dir, images, gradcam_dir=out or _run_config(run_dir).layout.gradcam_images,
                             target_class=class_name, layer=layer)
    for entry in entries:
        # A class, or for findings those called at their thresholds.
        decision = entry.get("decision")
        answer = decision if isinstance(decision, str) else ", ".join(decision or []) or "no finding called"
        click.echo(f"{entry['path']}: " + (f"error: {entry['error']}" if "error" in entry else
                                           f"{answer} -> {entry['gradcam']}"))


@cli.command()
@_run_dir_argument
@click.option("--format", "formats", callback=_formats, default="keras,savedmodel,tflite", show_default=True,
              metavar="[keras|savedmodel|tflite],...",
              help="Comma-separated formats to write, any of keras, savedmodel, tflite.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder. Default: RUN_DIR/export.")
def export(run_dir, formats, out):
    """Export the best winner with a model card (class names, input, metrics, hashes)."""
    from cxr_tuner.search.figures.text import number_text
    from cxr_tuner.search.delivery.export import export_model

    card = export_model(_run_config(run_dir), formats=formats, out=out, log=click.echo)
    for name, difference in card.get("agreement", {}).get("max_abs_probability_difference", {}).items():
        click.echo(f"  {name}: largest probability difference to the model on the test split "
                   f"{number_text(difference, '.2e', 'not measured')}")
    trained = card.get("precision", {})
    if "max_abs_probability_difference_to_trained" in trained:
        click.echo(f"  float32 export against the {trained['trained']} model: largest probability difference "
                   f"{number_text(trained['max_abs_probability_difference_to_trained'], '.2e', 'not measured')}, "
                   f"same predicted class {number_text(trained.get('same_predicted_class'), '.1%', 'not measured')}")


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--gradcam", "gradcam_dir", type=click.Path(file_okay=False), default=None,
              help="Also write Grad-CAM overlays into this folder.")
def predict(model, images, gradcam_dir):
    """Print one JSON object per image (JSON Lines), each as soon as it is done.

    MODEL is a run directory or a .keras file. Each line holds the probabilities and
    "decision": what the model card prescribes (the operating point's rule where there is
    one, else the most probable class; for findings, those called at their thresholds).
    An image that cannot be read gets a line with "error". Exit status: 0 when every
    image was read, 1 when any was not.
    """
    import json

    from cxr_tuner.search.delivery.predict import iter_predictions

    failed = 0
    for entry in iter_predictions(model, images, gradcam_dir=gradcam_dir):
        click.echo(json.dumps(entry))  # click.echo flushes: a reader sees each line as it is done
        failed += "error" in entry
    if failed:
        raise UserError(f"{failed} of {len(images)} image(s) could not be read (their lines say why).")


@cli.group()
def data():
    """Check a labelled image collection before (or after) a search."""


@data.command("audit")
@click.argument("path", type=click.Path())
@click.option("--split", "split_csv", type=click.Path(dir_okay=False), default=None,
              help="A run's split.csv: also count duplicate groups and patients across splits.")
@click.option("--out", type=click.Path(dir_okay=False), default="audit.csv", show_default=True,
              help="CSV of the groups found (group,path,label,split,kind).")
def audit(path, split_csv, out):
    """Find exact and near-duplicate images, images under two labels and split leakage.

    PATH is a folder of labelled X-rays or a CSV manifest, as for `search --data`.
    """
    from cxr_tuner.data.audit import audit_collection

    audit_collection(path, split_csv=split_csv, out=out, log=click.echo)


def main():
    """Console-script entry point."""
    cli(prog_name="cxr-tuner", obj={"started": _process_started()})


def _process_started() -> float:
    """``time.monotonic()`` when this process started (the interpreter's own start included); now where unknown."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # starttime: clock ticks after boot
            age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 60 else now


if __name__ == "__main__":
    main()
