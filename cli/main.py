"""The `kreport` command line."""

import click

from kcallbacks import __version__
from kreport.build import build
from kreport.compare import compare
from kreport.serve import serve
from kreport.summary import summary
from kreport.tensorboard_export import tensorboard


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kreport")
def cli():
    """Turn a kcallbacks run directory into things people look at.

    A run directory is what the kcallbacks callbacks write during
    `model.fit`: a manifest (run.json), the epoch history, the per-batch
    loss, an event log, checkpoints and backups. kreport reads it with
    pandas and never imports TensorFlow, so it starts fast and runs where
    TensorFlow is not installed. Only `kreport tensorboard` writes into a
    run directory (its event files), and `kreport build` its report;
    `kreport serve` shows runs live in the browser while they train.

    Exit status: 0 on success, 2 on a usage error or a path that is not a
    readable run directory.
    """


cli.add_command(build)
cli.add_command(tensorboard)
cli.add_command(summary)
cli.add_command(compare)
cli.add_command(serve)


def main():
    cli(prog_name="kreport")


if __name__ == "__main__":
    main()
