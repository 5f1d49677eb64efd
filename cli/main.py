"""The `kreport` command line."""

import click

from kcallbacks import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kreport")
def cli():
    """Turn a kcallbacks run directory into things people look at.

    A run directory is what the kcallbacks callbacks write during
    `model.fit`: a manifest (run.json), the epoch history, the per-batch
    loss, an event log, checkpoints and backups. kreport reads it with
    pandas and never imports TensorFlow, so it starts fast and runs where
    TensorFlow is not installed. It never modifies the run directory.

    Exit status: 0 on success, 2 on a usage error or a path that is not a
    readable run directory.
    """


def main():
    cli(prog_name="kreport")
if __name__ == "__main__":
    main()
