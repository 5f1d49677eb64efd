"""Which runs `kreport serve` shows, and its overview of them as a study.

A path on the command line that is a run directory (or does not exist
yet) is one run. An existing directory that is not a run is a study root:
the runs under it at any depth are shown, and it is searched again as the
overview is read, so the runs a sweep starts appear while it goes.
"""

import math
import os
import threading
import time

from kcallbacks.run_format import MANIFEST
from kreport import analysis, study


class RunSet:
    """Run key -> `LiveRun`, growing as study roots gain runs; thread-safe.

    Args:
        paths: run directories and study roots.
        make_live: (path, key) -> a `LiveRun`.
        interval: the least seconds between two searches of the roots.
    """

    def __init__(self, paths, make_live, interval=2.0):
        self._make_live = make_live
        self._interval = interval
        self._lock = threading.Lock()
        self._runs = {}
        self._real_paths = set()
        self.roots = [p for p in paths if os.path.isdir(p) and not _is_run(p)]
        for path in paths:
            if path not in self.roots:
                self._add(path)
        self._searched = -math.inf
        self._search_roots()

    def current(self):
        """The runs now, in the order they were found (searches the roots
        again when `interval` has passed)."""
        with self._lock:
            if time.monotonic() - self._searched >= self._interval:
                self._search_roots()
            return dict(self._runs)

    def _search_roots(self):
        self._searched = time.monotonic()
        for root in self.roots:
            try:
                found = study.find_run_directories([root])
            except study.StudyError:
                continue  # none yet
            for path, label in found:
                self._add(path, label)

    def _add(self, path, label=None):
        real = os.path.realpath(path)
        if real in self._real_paths:
            return
        self._real_paths.add(real)
        key = _unique_key(label or os.path.basename(os.path.normpath(path)), self._runs)
        self._runs[key] = self._make_live(path, key)


def _is_run(path):
    return os.path.isfile(os.path.join(path, MANIFEST))


def _unique_key(label, taken):
    from kreport.serve import url_safe

    base = url_safe(label)
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}-{n}"
    return key


def overview_rows(runs, objective=None, mode=None):
    """(rows, study columns) for the overview table: each run's summary,
    state, hyperparameters and best objective, best first; runs not written
    yet or without the objective last, in the order found."""
    rows = []
    for key, live in runs.items():
        summary = live.overview()
        manifest = live.manifest
        rows.append({
            "key": key, "path": live.path, "s": summary, "manifest": manifest,
            "hparams": study.hparams_of(manifest) if summary else {},
            "state": study.run_state(manifest, live.path) if summary else None,
        })
    written = [r for r in rows if r["s"] is not None]
    if objective is None:
        monitored = [q.name for r in written for q in r["s"].quantities]
        objective = monitored[0] if monitored else None
    if objective is not None and mode is None:
        mode = study.direction(objective, None, [r["manifest"] for r in written])[0]
    for row in rows:
        row["objective"] = None
        if row["s"] is not None and objective in row["s"].metrics:
            row["objective"] = row_live_best(runs[row["key"]], objective, mode)
    rows.sort(key=lambda r: study.rank_key(r["objective"][0] if r["objective"] else None, mode))
    names, same = study.hparam_columns([r["hparams"] for r in written],
                                        [r["manifest"] for r in written]) if written else ([], {})
    columns = {"objective": objective, "mode": mode, "hparam_names": names,
               "same_everywhere": same}
    return rows, columns


def row_live_best(live, name, mode):
    """(best value, epoch) of `name` in the rows the live run has read."""
    best = None
    for epoch, value in live.history_values(name):
        if best is None or (value < best[0] if mode == "min" else value > best[0]):
            best = (value, epoch)
    return best
