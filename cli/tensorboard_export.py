"""`kreport tensorboard`: a run, or a study of runs, as TensorBoard event
files (scalars and the HParams dashboard), without TensorFlow."""

import os

import click

from kreport.common import echo_warnings, fail, read_run


@click.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--logdir", type=click.Path(file_okay=False, path_type=str),
    help="Where to write the event files.  [default: DIR/tensorboard]",
)
def tensorboard(run_dir, logdir):
    """Write a run, or every run under DIR, as TensorBoard event files,
    without TensorFlow.

    A run (DIR holds run.json) is laid out as Keras' TensorBoard callback
    lays it out: LOGDIR/train and LOGDIR/validation, with scalars
    epoch_loss, epoch_accuracy, ..., epoch_learning_rate at step = epoch,
    and the per-batch log as batch_loss (and any per-batch metric) at
    step = global step, continuous across resumes.

    HParams: each run is also a session of TensorBoard's HParams dashboard:
    its hyperparameters (run.json's hparams: the optimizer, learning rate,
    batch size, epochs and parameter count kcallbacks recorded, a
    keras-tuner trial's values, yours), its last epoch's metrics (epoch_loss
    in group train, in group validation, ...) and its status (finished or
    stopped early: success; preempted: failure; running; else unknown).
    A run from before hparams were recorded is a session without any. A
    lone run's session and the experiment are in LOGDIR itself, which
    TensorBoard calls run "."; there its hparams plugin misses the metrics
    (it looks for "./train"): to see them, point TensorBoard at a directory
    above LOGDIR, or export a study.

    A study (DIR is not a run) exports every run directory found under DIR,
    at any depth (not inside a run, nor in directories whose name starts
    with a dot, nor in LOGDIR), into LOGDIR/PATH, PATH being the run's path
    below DIR, and writes at LOGDIR the experiment: every hparam with its
    domain (an interval for numbers, the set of values for bools and
    strings) and every metric, so the dashboard lists each run as a session
    to sort, filter and compare. A run that cannot be read is skipped with
    a warning.

    Running it again replaces the files it wrote before, so no point is
    doubled, nor any session; other event files in LOGDIR are kept. Then:

        tensorboard --logdir LOGDIR
    """
    from kcallbacks.run_format import MANIFEST

    logdir = logdir or os.path.join(run_dir, "tensorboard")
    if os.path.isdir(run_dir) and not os.path.lexists(os.path.join(run_dir, MANIFEST)):
        _export_study(run_dir, logdir)
    else:
        _export_run(run_dir, logdir)
    click.echo(f"View with: tensorboard --logdir {logdir}")


def _export_run(run_dir, logdir):
    from kreport import tensorboard_hparams
    from kreport.event_files import export

    run = read_run(run_dir)
    session, warnings = tensorboard_hparams.session_of(run, ".")
    try:
        written = export(run, logdir)
        if tensorboard_hparams.worth_a_session(session):
            tensorboard_hparams.write(logdir, [session])
    except OSError as error:
        fail(f"{logdir}: cannot write event files ({error.strerror or error})")
    echo_warnings(run.warnings + warnings)
    counts = ", ".join(f"{count} scalars in {name}/" for name, count in written.items())
    click.echo(f"Wrote {counts or 'no scalars'} under {logdir}")
    if tensorboard_hparams.worth_a_session(session):
        click.echo(f"HParams: 1 session, {len(session.hparams)} hparams, {len(session.metrics)} metrics")


def find_runs(directory, skip):
    """The run directories under `directory` (relative paths, sorted): those
    holding a manifest, not looked into further; directories whose name
    starts with a dot and `skip` are not looked into."""
    from kcallbacks.run_format import MANIFEST

    skip = os.path.realpath(skip)
    found = []
    for parent, subdirectories, files in os.walk(directory):
        if MANIFEST in files:
            found.append(os.path.relpath(parent, directory))
            subdirectories[:] = []
            continue
        subdirectories[:] = sorted(
            name for name in subdirectories
            if not name.startswith(".") and os.path.realpath(os.path.join(parent, name)) != skip
        )
    return sorted(found)


def _export_study(directory, logdir):
    from kcallbacks.run_format import MANIFEST, RunDirectoryError
    from kcallbacks.run_reader import load_run
    from kreport import tensorboard_hparams
    from kreport.event_files import export

    if os.path.realpath(logdir) == os.path.realpath(directory):
        fail(f"{logdir}: the LOGDIR of a study must not be DIR itself (it would write into the runs)")
    paths = find_runs(directory, logdir)
    if not paths:
        fail(f"{directory}: neither a run directory nor a directory holding runs")
    sessions, scalars = [], 0
    for path in paths:
        try:
            run = load_run(os.path.join(directory, path))
        except RunDirectoryError as error:
            echo_warnings([f"{error}; run skipped"])
            continue
        except OSError as error:
            echo_warnings([f"{path}: cannot read run directory ({error.strerror or error}); run skipped"])
            continue
        session, warnings = tensorboard_hparams.session_of(run, path)
        try:
            written = export(run, os.path.join(logdir, path))
        except OSError as error:
            fail(f"{logdir}: cannot write event files ({error.strerror or error})")
        echo_warnings([f"{path}: {warning}" for warning in run.warnings + warnings])
        counts = ", ".join(f"{count} scalars in {name}/" for name, count in written.items())
        click.echo(f"{path}: {counts or 'no scalars'}")
        scalars += sum(written.values())
        sessions.append(session)
    if not sessions:
        fail(f"{directory}: none of the {len(paths)} run directories under it could be read")
    try:
        experiment = tensorboard_hparams.write(logdir, sessions)
    except OSError as error:
        fail(f"{logdir}: cannot write event files ({error.strerror or error})")
    click.echo(
        f"Wrote {len(sessions)} runs ({scalars} scalars) under {logdir}; HParams: {len(sessions)} sessions, "
        f"{len(experiment.hparam_infos)} hparams, {len(experiment.metric_infos)} metrics"
    )
