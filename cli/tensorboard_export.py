"""`kreport tensorboard`: a run as TensorBoard event files, without TensorFlow."""

import os

import click

from kreport.common import echo_warnings, fail, read_run


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--logdir", type=click.Path(file_okay=False, path_type=str),
    help="Where to write the event files.  [default: RUN_DIR/tensorboard]",
)
def tensorboard(run_dir, logdir):
    """Write the run as TensorBoard event files, without TensorFlow.

    The layout matches Keras' TensorBoard callback: LOGDIR/train and
    LOGDIR/validation, with scalars epoch_loss, epoch_accuracy, ...,
    epoch_learning_rate at step = epoch, and the per-batch log as
    batch_loss (and any per-batch metric) at step = global step, continuous
    across resumes.

    Running it again replaces the files it wrote before, so no point is
    doubled; other event files in LOGDIR are kept. Then:

        tensorboard --logdir LOGDIR
    """
    from kreport.event_files import export

    run = read_run(run_dir)
    logdir = logdir or os.path.join(run_dir, "tensorboard")
    try:
        written = export(run, logdir)
    except OSError as error:
        fail(f"{logdir}: cannot write event files ({error.strerror or error})")
    echo_warnings(run.warnings)
    counts = ", ".join(f"{count} scalars in {name}/" for name, count in written.items())
    click.echo(f"Wrote {counts or 'no scalars'} under {logdir}")
    click.echo(f"View with: tensorboard --logdir {logdir}")
