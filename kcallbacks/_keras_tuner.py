"""What kcallbacks knows of keras-tuner's internals, kept in one place.

keras-tuner runs each trial's fit with deep copies of the callbacks given
to `search()`, to which it adds a `TunerCallback` holding the tuner and the
trial (`keras_tuner/src/engine/tuner.py`, `Tuner.run_trial`). It gives a
callback no other handle on the trial, so that is how kcallbacks finds it.
keras-tuner is never imported here: a fit that is no trial has no
`TunerCallback`.
"""

import os
import sys

# The directory of a trial's run under the given one, as keras-tuner names
# its own trial directories (`trial_<id>`).
TRIAL_PREFIX = "trial_"


class Trial:
    """The keras-tuner trial a fit belongs to."""

    def __init__(self, trial_id, hyperparameters, tuner, execution, executions):
        self.trial_id = str(trial_id)
        self.hyperparameters = hyperparameters
        self.tuner = tuner
        self.execution = execution
        self.executions = executions

    @property
    def directory(self):
        """The trial's run directory, relative to the one the callbacks were
        given: `trial_<id>`, and `execution<N>` under it when each trial
        trains several times (keras-tuner's `executions_per_trial`)."""
        name = TRIAL_PREFIX + self.trial_id
        if self.executions > 1:
            name = os.path.join(name, f"execution{self.execution}")
        return name

    def manifest_entry(self):
        return {
            "id": self.trial_id,
            "hyperparameters": self.hyperparameters,
            "tuner": self.tuner,
            "execution": self.execution,
        }


def trial_of(callbacks):
    """The `Trial` whose fit runs `callbacks`, or None outside keras-tuner."""
    for callback in callbacks:
        cls = type(callback)
        if cls.__name__ == "TunerCallback" and cls.__module__.startswith("keras_tuner"):
            tuner, trial = callback.tuner, callback.trial
            values = dict(trial.hyperparameters.values)
            return Trial(
                trial.trial_id,
                {name: _plain(value) for name, value in values.items()},
                type(tuner).__name__,
                _execution(tuner),
                int(getattr(tuner, "executions_per_trial", 1) or 1),
            )
    return None


def _execution(tuner):
    """The execution of the trial being trained: `run_trial`'s loop
    variable, 0 when it cannot be seen (a tuner's own `run_trial`)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "run_trial" and frame.f_locals.get("self") is tuner:
            execution = frame.f_locals.get("execution", 0)
            return execution if isinstance(execution, int) else 0
        frame = frame.f_back
    return 0


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def place_in_trial(callbacks):
    """When the fit is a keras-tuner trial, moves every kcallbacks callback
    of it into the trial's own run directory, once: a path inside a run
    directory the callbacks were given moves with it (`runs/tune/backup`
    becomes `runs/tune/trial_03/backup`); any other directory gets the
    trial's directory inside it, and a file's gets it before the file name.
    So trials never share a run, a backup or a checkpoint."""
    ours = [c for c in callbacks if hasattr(c, "move_into_trial")]
    if not ours or all(c.trial_directory is not None for c in ours):
        return
    trial = trial_of(callbacks)
    if trial is None:
        return
    roots = sorted(
        {os.path.abspath(c.run_dir) for c in ours if c.run_dir is not None},
        key=len, reverse=True,
    )

    def rebase(path, is_file=False):
        path = os.path.abspath(os.fspath(path))
        for root in roots:
            if path == root or path.startswith(root + os.sep):
                inside = os.path.relpath(path, root)
                return os.path.normpath(os.path.join(root, trial.directory, inside))
        if is_file:
            head, name = os.path.split(path)
            return os.path.join(head, trial.directory, name)
        return os.path.join(path, trial.directory)

    for callback in ours:
        if callback.trial_directory is None:
            callback.move_into_trial(rebase)
            callback.trial_directory = trial.directory
