"""Command line: one click group, one thin command per verb.

Each command only parses flags into library calls; a ``UserError`` becomes one
line on stderr and exit status 1, without a traceback.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from data.errors import UserError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: quiet C++ logs


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Group)
def cli():
    """Search transfer-learning classifiers for chest X-rays with KerasTuner."""


def _csv(ctx, param, value):
    if value is None:
        return None
    return tuple(item.strip() for item in value.split(",") if item.strip())


def search_options(function):
    """The flags that define a search, shared by `search` and `worker`."""
    options = [
        click.option("--data", type=click.Path(), default=None,
                     help="Folder of labelled X-rays or a CSV manifest (path,label[,patient_id]). "
                          "Omit for the built-in synthetic demo data."),
        click.option("--run-dir", type=click.Path(file_okay=False), default="runs/demo",
                     show_default=True, help="Run directory; the same one again resumes."),
        click.option("--backbones", callback=_csv, default=None,
                     help="Comma-separated registry names (see `backbones`). "
                          "Default: vanilla_cnn,mobilenet_025 for the demo, else efficientnet_b0,"
                          "mobilenet_v2,resnet50,densenet121."),
        click.option("--image-size", type=click.IntRange(16, 1024), default=None,
                     help="Square image side in pixels. Default: 64 for the demo, else 224."),
        click.option("--weights", default=None,
                     help="imagenet, none, or a weights file. Default: none for the demo, else imagenet."),
        click.option("--tuner", type=click.Choice(["hyperband", "bayesian", "random"]),
                     default="hyperband", show_default=True),
        click.option("--max-epochs", type=click.IntRange(1), default=None,
                     help="Most epochs for one model. Default: 6 for the demo, else 9."),
        click.option("--factor", type=click.IntRange(2), default=3, show_default=True,
                     help="Hyperband's reduction factor."),
        click.option("--max-trials", type=click.IntRange(1), default=20, show_default=True,
                     help="Trial budget of the bayesian and random tuners."),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Same seed, same split and same trial sequence."),
        click.option("--overwrite", is_flag=True, help="Start over instead of resuming."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def _config(options: dict):
    from search.config import new_config

    data = options.pop("data")
    if data is not None:
        data = str(Path(data).resolve())
    return new_config(run_dir=options.pop("run_dir"), data=data, **options)


@cli.command()
@search_options
def search(**options):
    """Search the best classifier for the data (resumes an existing run)."""
    from search.run import run_search

    config = _config(options)
    best = run_search(config, log=click.echo)
    _print_best(best, config.path)


def _print_best(best: dict, run_dir: Path) -> None:
    if best["best"] is None:
        raise UserError(f"No trial of {best['trials']} completed; see the trial lines above for why.")
    top = best["best"]
    click.echo(f"best trial {top['trial_id']} of {best['trials']}: "
               f"{best['objective']['name']} = {top[best['objective']['name']]:.4f}")
    for name, value in top["hyperparameters"].items():
        click.echo(f"  {name}: {value}")
    click.echo(f"inspect: tensorboard --logdir {run_dir / 'tensorboard'}")


@cli.command()
def backbones():
    """List the registered backbones with their default input sizes."""
    from hypermodels.registry import BACKBONES

    for spec in BACKBONES.values():
        weights = spec.weight_file(spec.default_size) if spec.pretrainable else "(from scratch only)"
        click.echo(f"{spec.name:<16} size {spec.default_size:>3} (min {spec.min_size:>2})  "
                   f"grad-cam {spec.last_conv_layer:<20} {weights}")


def main():
    """Console-script entry point."""
    cli(prog_name="cxr-tuner")


if __name__ == "__main__":
    main()
