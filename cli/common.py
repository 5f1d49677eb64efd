"""What every kreport command shares: reading a run, and failing in one line."""

import click


def fail(message):
    """Ends the command with `message` on one stderr line and exit status 2."""
    click.echo(f"kreport: error: {message}", err=True)
    raise click.exceptions.Exit(2)


def read_run(path):
    """`load_run(path)`, with a path that is not a readable run as a clean exit 2."""
    from kcallbacks.run_format import RunDirectoryError
    from kcallbacks.run_reader import load_run

    try:
        return load_run(path)
    except RunDirectoryError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{path}: cannot read run directory ({error.strerror or error})")


def write_output(path, text):
    """Writes a report file atomically; a path that cannot be written exits 2."""
    from kcallbacks.durable_io import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as error:
        fail(f"{path}: cannot write ({error.strerror or error})")


def echo_warnings(warnings):
    """The report shows its warnings; the terminal gets them too, on stderr."""
    for warning in warnings:
        click.echo(f"kreport: warning: {warning}", err=True)
