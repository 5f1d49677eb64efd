"""A program's fits into one run directory: where the run stands between fits.

Programs call `fit` more than once on one run: fine-tuning in two phases (a
new optimizer the second time), a loop of `fit(epochs=1)`, a notebook cell
run again. The run stays one run. Its history counts epochs across the fits
and its per-batch log counts steps across them, although Keras numbers each
fit's epochs from its `initial_epoch` and a new optimizer counts its
iterations from 0.

This module keeps, for this process:

- per run directory, a `RunPosition`: the run's next epoch and next step,
  and each fit's epoch offset (run epoch = Keras' epoch + offset);
- per backup directory, how many fits have finished (`finished_fits`),
  which tells which fit of the program the next one is.

Both belong to one model object: the fits of a program are its fits of
one model (phases, loops and continued fits all train the same object). A
fit of another model object into the same directories starts the program
over, as a new process does, or a notebook whose cells are run again from
the one that builds the model: its first fit either resumes from a backup
(which restores the position) or starts the run afresh. Imports no Keras.
"""

import contextlib
import os
import weakref

# path -> (weak reference to the model, RunPosition)
_positions = {}
# path -> (weak reference to the model, number of its fits that finished)
_finished_fits = {}


def _key(path):
    return os.path.abspath(os.fspath(path))


def _of_model(table, path, model, fresh):
    """The entry of `table` for `path` if it belongs to `model`; otherwise
    a fresh one (from `fresh()`), now `model`'s."""
    key = _key(path)
    entry = table.get(key)
    if entry is None or entry[0]() is not model:
        entry = table[key] = (weakref.ref(model), fresh())
    return entry[1]


class RunPosition:
    """Where one run directory's run stands in this process."""

    def __init__(self):
        # The next epoch and step the run would record; None: not known in
        # this process (nothing recorded or restored yet).
        self.next_epoch = None
        self.next_step = None
        self._offsets = weakref.WeakKeyDictionary()
        self._restored_offset = None

    def epoch_offset(self, fit, first_epoch):
        """The offset of `fit` (any object standing for one `fit` call),
        fixed the first time it is asked, at the fit's first epoch
        `first_epoch`. A fit resumed from a backup keeps the offset it had;
        otherwise a fit continues the run where it stands: its first epoch
        becomes the run's next epoch, unless `first_epoch` is already
        later (as after phase 1 of a fine-tuning, whose phase 2 passes
        `initial_epoch`)."""
        if fit not in self._offsets:
            if self._restored_offset is not None:
                offset = self._restored_offset
            elif self.next_epoch is None:
                offset = 0
            else:
                offset = max(0, self.next_epoch - first_epoch)
            self._restored_offset = None
            self._offsets[fit] = offset
        return self._offsets[fit]

    def restore(self, next_epoch=None, next_step=None, epoch_offset=None):
        """Puts back what a backup recorded: the position at the backup,
        and the offset of the fit it was taken in (that fit's resume keeps
        it)."""
        if next_epoch is not None:
            self.next_epoch = int(next_epoch)
        if next_step is not None:
            self.next_step = int(next_step)
        if epoch_offset is not None:
            self._restored_offset = int(epoch_offset)



def position(run_dir, model):
    """The `RunPosition` of `run_dir` for `model`'s fits in this process."""
    return _of_model(_positions, run_dir, model, RunPosition)


def forget_restored_offsets():
    """A restored fit that trains no epoch (a finished one) leaves no
    offset for the next fit."""
    for _, run_position in _positions.values():
        run_position._restored_offset = None


def finished_fits(backup_dir, model):
    """How many of `model`'s fits backed up into `backup_dir` finished in
    this process: the index, within the program, of the fit that runs
    next."""
    return _of_model(_finished_fits, backup_dir, model, lambda: 0)


def count_finished_fit(backup_dir, model, fit_index):
    """Records that `model`'s fit with index `fit_index` finished."""
    _finished_fits[_key(backup_dir)] = (weakref.ref(model), fit_index + 1)


_earlier_fit_end = [False]


@contextlib.contextmanager
def restoring_an_earlier_fit_end():
    """Within it, callback states being restored are the end of a fit that
    later fits of the program followed: what those later fits left (files,
    events) is not rolled back, as it is on a resume."""
    _earlier_fit_end[0] = True
    try:
        yield
    finally:
        _earlier_fit_end[0] = False


def later_fits_follow():
    """Whether the state being restored now is an earlier fit's end (see
    `restoring_an_earlier_fit_end`)."""
    return _earlier_fit_end[0]
