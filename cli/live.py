"""A run as `kreport serve` shows it while it is written.

`LiveRun` follows one run directory (`RunFollower`: only what was appended
is read), keeps what it has read, and answers each page's question "what
changed since version V?": the charts' new points (appended to the page's
charts, so the user's zoom survives), charts to redraw, and sections of the
page to replace. The figures and sections are those of `kreport build`,
made by the same code.

The work of an update is bounded by what is drawn, not by the length of
the logs: new bytes are read once, and the per-batch loss is downsampled as
it arrives (`BatchLossSeries`) instead of from the whole log.
"""

import collections
import html
import math
import threading
import time
import uuid

import numpy as np

from kcallbacks.run_reader import RunFollower, assemble_run
from kreport import analysis, charts
from kreport.build import report_context, report_figures

# A page that is further behind than this many versions is sent everything.
KEPT_VERSIONS = 64
# The page's sections that kreport serve re-renders (the template's macros).
SECTIONS = ("status", "facts", "warnings", "numbers", "checkpoints", "events")

_BUCKET_FIELDS = [
    ("low_step", "<i8"), ("low", "<f8"), ("high_step", "<i8"), ("high", "<f8"), ("bad_step", "<i8"),
]
_NONE = -1  # a bucket without a finite point, or without a NaN


class BatchLossSeries:
    """The per-batch loss downsampled as it arrives, as `charts.minmax_indices`
    does for a whole log: consecutive buckets of equal size, each keeping its
    lowest and highest finite point and its first NaN. When there are too many
    buckets, neighbours merge and the size doubles, so the points kept stay
    bounded however long the run. Epoch means are summed as records come.

    Args:
        max_points: about how many points to keep.
    """

    def __init__(self, max_points=charts.MAX_BATCH_POINTS):
        self.max_buckets = max(max_points // 2, 1)
        self.size = 1
        self.buckets = np.zeros(0, _BUCKET_FIELDS)
        # The bucket being filled: a summary of what merged into it, and its raw points.
        self.open_summary = None
        self.open_count = 0
        self.pending_steps = np.zeros(0, "i8")
        self.pending_losses = np.zeros(0, "f8")
        self.total_steps = 0
        self.epochs = {}  # epoch -> [weighted loss sum, weight, first step, last step]
        self.non_finite_steps = 0
        self.first_non_finite_step = None

    def add(self, records):
        """Adds per-batch records (a numpy structured array with step, epoch,
        size and loss)."""
        if records is None or not len(records):
            return
        steps = records["step"].astype("i8")
        losses = records["loss"].astype("f8")
        self.total_steps += len(steps)
        bad = ~np.isfinite(losses)
        if bad.any():
            self.non_finite_steps += int(bad.sum())
            if self.first_non_finite_step is None:
                self.first_non_finite_step = int(steps[np.argmax(bad)])
        self._add_epoch_sums(records["epoch"], steps, losses, records["size"])
        self.pending_steps = np.concatenate([self.pending_steps, steps])
        self.pending_losses = np.concatenate([self.pending_losses, losses])
        self._close_full_buckets()
        while len(self.buckets) > self.max_buckets:
            self._merge_neighbours()

    def _add_epoch_sums(self, epochs, steps, losses, sizes):
        weights = np.where(sizes > 0, sizes, 1).astype("f8")
        finite = np.isfinite(losses)
        weights = np.where(finite, weights, 0.0)
        # Records come in step order, so each epoch is one stretch of them.
        starts = np.flatnonzero(np.r_[True, epochs[1:] != epochs[:-1]])
        ends = np.r_[starts[1:], len(epochs)] - 1
        totals = np.add.reduceat(np.where(finite, losses, 0.0) * weights, starts)
        counts = np.add.reduceat(weights, starts)
        for start, end, total, count in zip(starts, ends, totals, counts):
            sums = self.epochs.setdefault(int(epochs[start]), [0.0, 0.0, int(steps[start]), 0])
            sums[0] += float(total)
            sums[1] += float(count)
            sums[3] = int(steps[end])

    def _close_full_buckets(self):
        room = self.size - self.open_count
        if len(self.pending_steps) < room:
            return
        first = _summaries(self.pending_steps[None, :room], self.pending_losses[None, :room])
        if self.open_summary is not None:
            first = _merge(np.concatenate([self.open_summary, first]), 2)
        rest_steps, rest_losses = self.pending_steps[room:], self.pending_losses[room:]
        whole = len(rest_steps) // self.size * self.size
        full = _summaries(
            rest_steps[:whole].reshape(-1, self.size), rest_losses[:whole].reshape(-1, self.size)
        )
        self.buckets = np.concatenate([self.buckets, first, full])
        self.pending_steps, self.pending_losses = rest_steps[whole:], rest_losses[whole:]
        self.open_summary, self.open_count = None, 0

    def _merge_neighbours(self):
        self.size *= 2
        paired = len(self.buckets) // 2 * 2
        if paired < len(self.buckets):
            # The odd bucket out is half of the new bucket being filled.
            leftover = self.buckets[paired:]
            if self.open_summary is not None:
                leftover = _merge(np.concatenate([leftover, self.open_summary]), 2)
            self.open_summary, self.open_count = leftover, self.size // 2 + self.open_count
        self.buckets = _merge(self.buckets[:paired], 2)

    def points(self):
        """The series as drawn: `charts.BatchLossPoints`. The full buckets'
        points only grow (until buckets merge); the bucket being filled is
        the tail: its raw points, after the last full bucket's last point."""
        steps, losses = _points_of(self.buckets)
        tail_steps, tail_losses = (
            _points_of(self.open_summary) if self.open_summary is not None else (steps[:0], losses[:0])
        )
        tail_steps = np.concatenate([steps[-1:], tail_steps, self.pending_steps])
        tail_losses = np.concatenate([losses[-1:], tail_losses, self.pending_losses])
        order = np.argsort(tail_steps, kind="stable")
        epochs = sorted(self.epochs)
        sums = [self.epochs[e] for e in epochs]
        centers = np.array([(first + last) / 2.0 for _, _, first, last in sums])
        means = np.array([total / weight if weight else np.nan for total, weight, _, _ in sums])
        return charts.BatchLossPoints(
            steps, losses, centers, means, self.total_steps, tail_steps[order], tail_losses[order]
        )


def _points_of(summaries):
    """(steps, losses) of bucket summaries' points, in step order."""
    steps = np.concatenate([summaries["low_step"], summaries["high_step"], summaries["bad_step"]])
    losses = np.concatenate([summaries["low"], summaries["high"], np.full(len(summaries), np.nan)])
    real = steps != _NONE
    steps, first = np.unique(steps[real], return_index=True)
    return steps, losses[real][first]


def _summaries(steps, losses):
    """One bucket summary per row of `steps` and `losses` (2-D, equal rows)."""
    summary = np.zeros(len(steps), _BUCKET_FIELDS)
    if not len(steps):
        return summary
    finite = np.isfinite(losses)
    rows = np.arange(len(steps))
    low = np.argmin(np.where(finite, losses, np.inf), axis=1)
    high = np.argmax(np.where(finite, losses, -np.inf), axis=1)
    any_finite = finite.any(axis=1)
    summary["low_step"] = np.where(any_finite, steps[rows, low], _NONE)
    summary["low"] = losses[rows, low]
    summary["high_step"] = np.where(any_finite, steps[rows, high], _NONE)
    summary["high"] = losses[rows, high]
    bad = ~finite
    summary["bad_step"] = np.where(bad.any(axis=1), steps[rows, np.argmax(bad, axis=1)], _NONE)
    return summary


def _merge(summaries, group):
    """Merges each `group` consecutive bucket summaries into one."""
    grouped = summaries.reshape(-1, group)
    merged = np.zeros(len(grouped), _BUCKET_FIELDS)
    rows = np.arange(len(grouped))
    has_low = grouped["low_step"] != _NONE
    low = np.argmin(np.where(has_low, grouped["low"], np.inf), axis=1)
    high = np.argmax(np.where(has_low, grouped["high"], -np.inf), axis=1)
    for name, pick in (("low_step", low), ("low", low), ("high_step", high), ("high", high)):
        merged[name] = grouped[name][rows, pick]
    has_bad = grouped["bad_step"] != _NONE
    first_bad = np.argmax(has_bad, axis=1)
    merged["bad_step"] = np.where(has_bad.any(axis=1), grouped["bad_step"][rows, first_bad], _NONE)
    return merged


class LiveRun:
    """One run directory as kreport serve shows it; thread-safe.

    Args:
        path: the run directory (it may not exist yet).
        key: the run's name in the server's URLs.
        min_interval: seconds between two reads of the directory, however
            many pages ask.
    """

    def __init__(self, path, key, min_interval=0.5):
        self.path = str(path)
        self.key = key
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._follower = RunFollower(path)
        self._last_read = -math.inf
        # Generations are named per server, so a page left open across a
        # restart of the server is sent everything.
        self._server_token = uuid.uuid4().hex[:8]
        self._generation_count = 0
        self._start_over()

    def _start_over(self):
        """Forgets everything read: the next page update redraws it all."""
        self._new_generation()
        self._version = 0
        self.summary = None
        self._manifest = {}
        self._rows = []
        self._events = []
        self._warnings = []
        self._batches = BatchLossSeries()
        self._charts = {}  # key -> (section, plain figure)
        # Until the run is read, every section is empty but one that says so
        # (a page that showed a run which went away clears its tables).
        self._sections = dict.fromkeys(SECTIONS, "")
        self._sections["facts"] = (
            f'<p class="muted">Waiting for <code>{html.escape(self.path)}</code> '
            "to become a run directory.</p>"
        )

    def update(self, generation=None, version=None):
        """Reads what was written (at most every `min_interval` seconds) and
        returns what a page at (`generation`, `version`) needs, as JSON-ready
        data: `{"generation", "version", "full", "charts", "sections"}`. With
        `full`, `charts` lists every chart in order as {key, section,
        figure}; otherwise it maps the key of each changed chart to
        {"figure"} (redraw) or to what `figure_change` describes (points
        appended to traces, traces replaced, the title). `sections` maps
        section names to their new HTML."""
        with self._lock:
            self._refresh()
            return self._answer(generation, version)

    def overview(self):
        """The run's summary, read fresh enough (None until the run exists)."""
        with self._lock:
            self._refresh()
            return self.summary

    @property
    def manifest(self):
        """The run's manifest as last read ({} until the run exists)."""
        with self._lock:
            return self._manifest

    def history_values(self, name):
        """[(epoch, value)] of the finite values of metric `name` read so far."""
        with self._lock:
            return [
                (row["epoch"], float(row[name])) for row in self._rows
                if isinstance(row.get(name), (int, float)) and not isinstance(row.get(name), bool)
                and math.isfinite(row[name])
            ]

    def _refresh(self):
        """Reads what the run directory gained; the caller holds the lock."""
        now = time.monotonic()
        if now - self._last_read < self.min_interval:
            return
        self._last_read = now
        changes = self._follower.poll()
        if changes.reset or (not changes.exists and self.summary is not None):
            self._start_over()
        if not changes.exists or not (changes.changed or self.summary is None):
            return
        if changes.manifest is not None:
            self._manifest = changes.manifest
        self._rows += changes.history_rows
        self._events += changes.events
        self._warnings += changes.warnings
        self._batches.add(changes.batches)
        self._rebuild()

    def _rebuild(self):
        run = assemble_run(self._follower.path, self._manifest, self._rows, None, self._events, self._warnings)
        self.summary = summary = analysis.summarize(run)
        if self._batches.non_finite_steps:
            # summarize finds these in run.batches, which is not kept here.
            summary.warnings.append(analysis.non_finite_batches_warning(
                self._batches.non_finite_steps, self._batches.first_non_finite_step))
        figures = [
            (key, section, plain_figure(figure))
            for key, section, figure in report_figures(run, summary, self._batches.points())
        ]
        change = {"charts": {}, "sections": {}}
        if [(key, section) for key, section, _ in figures] != [
            (key, section) for key, (section, _) in self._charts.items()
        ]:
            change["layout"] = True  # charts came or went: pages redraw all
        for key, section, figure in figures:
            old = self._charts.get(key)
            if old is None or old[0] != section:
                change["charts"][key] = {"figure": figure}
            else:
                chart_change = figure_change(old[1], figure)
                if chart_change:
                    change["charts"][key] = chart_change
        self._charts = {key: (section, figure) for key, section, figure in figures}
        for name, section_html in self._render_sections(run, summary).items():
            if self._sections.get(name) != section_html:
                change["sections"][name] = section_html
                self._sections[name] = section_html
        if change.get("layout"):
            self._new_generation()
        self._version += 1
        self._changes.append((self._version, change))

    def _new_generation(self):
        self._generation_count += 1
        self._generation = f"{self._server_token}-{self._generation_count}"
        self._changes = collections.deque(maxlen=KEPT_VERSIONS)

    def _render_sections(self, run, summary):
        from kreport.render import environment

        macros = environment().get_template("_run_sections.html.j2").module
        warnings = environment().get_template("_macros.html.j2").module.warning_list
        context = report_context(run, summary)
        return {
            "status": str(macros.run_status(summary)),
            "facts": str(macros.run_facts(summary, context["epoch_seconds"], context["distribution"])),
            "warnings": str(warnings(summary.warnings)),
            "numbers": str(macros.key_numbers(summary)),
            "checkpoints": str(macros.checkpoint_table(summary)),
            "events": str(macros.event_table(context["events"], context["events_left_out"])),
        }

    def _answer(self, generation, version):
        kept = [v for v, _ in self._changes]
        behind = (
            version is None
            or generation != self._generation
            or version > self._version
            or (version < self._version and (not kept or version < kept[0] - 1))
        )
        answer = {"generation": self._generation, "version": self._version, "exists": self.summary is not None}
        if behind:
            answer["full"] = True
            answer["charts"] = [
                {"key": key, "section": section, "figure": figure}
                for key, (section, figure) in self._charts.items()
            ]
            answer["sections"] = dict(self._sections)
            return answer
        answer["full"] = False
        answer["charts"], answer["sections"] = {}, {}
        for _, change in (c for c in self._changes if c[0] > version):
            answer["sections"].update(change["sections"])
            for key, chart_change in change["charts"].items():
                merged = answer["charts"].setdefault(key, {})
                if "figure" in merged or "figure" in chart_change:
                    answer["charts"][key] = {"figure": self._charts[key][1]}
                    continue
                current = self._charts[key][1]["data"]
                for index in chart_change.get("replace", {}):
                    # Replaced at some version: send what it holds now.
                    merged.setdefault("replace", {})[index] = {
                        name: current[index][name] for name in _GROWING if name in current[index]
                    }
                    merged.get("extend", {}).pop(index, None)
                for index, arrays in chart_change.get("extend", {}).items():
                    if index in merged.get("replace", {}):
                        continue  # what it holds now is in the replacement
                    into = merged.setdefault("extend", {}).setdefault(index, {name: [] for name in arrays})
                    for name, values in arrays.items():
                        into[name] = into[name] + values
                if "title" in chart_change:
                    merged["title"] = chart_change["title"]
        return answer


# --- figures as plain JSON data, and how one grew from another -----------------

# The trace attributes that grow as a run is written; anything else changing
# in a trace means the chart is redrawn.
_GROWING = ("x", "y", "hovertext")


def plain_figure(figure):
    """A plotly figure as plain JSON-ready data: lists, with null for NaN.

    Pages extend traces with plain lists, and growth is found by comparing
    lists. The layout
    gets a fixed `uirevision`, so redrawing the figure keeps the user's zoom.
    """
    layout = dict(figure["layout"])
    template = layout.pop("template", None)  # one shared dict, already plain
    plain = {"data": _plain(figure["data"]), "layout": _plain(layout)}
    plain["layout"]["uirevision"] = "kreport-serve"
    if template is not None:
        plain["layout"]["template"] = template
    return plain


def _plain(value):
    if isinstance(value, np.ndarray):
        values = value.tolist()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            values = [v if math.isfinite(v) else None for v in values]
        return values
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def figure_change(old, new):
    """How `new` differs from `old` (plain figures): None if not at all; else
    {"extend": {trace index: {attribute: appended values}}, "replace":
    {trace index: {attribute: all values}}, "title": text}, with only what
    applies (a trace that grew is extended; one whose points changed, like
    the per-batch loss when its buckets merge, is replaced); or
    {"figure": new} when anything else changed."""
    redraw = {"figure": new}
    old_layout, new_layout = dict(old["layout"]), dict(new["layout"])
    old_title, new_title = old_layout.pop("title", None), new_layout.pop("title", None)
    if old_layout != new_layout or len(old["data"]) != len(new["data"]):
        return redraw
    extend, replace = {}, {}
    for index, (before, after) in enumerate(zip(old["data"], new["data"])):
        fixed = {k: v for k, v in before.items() if k not in _GROWING}
        if fixed != {k: v for k, v in after.items() if k not in _GROWING}:
            return redraw
        arrays = [name for name in _GROWING if name in after]
        if all(after[name] == before.get(name) for name in arrays):
            continue
        grown = {name: after[name][len(before.get(name) or []):] for name in arrays}
        lengths = {len(values) for values in grown.values()}
        if all(after[name][: len(before.get(name) or [])] == (before.get(name) or []) for name in arrays) and len(lengths) == 1:
            extend[index] = grown
        else:
            replace[index] = {name: after[name] for name in arrays}
    change = {}
    if extend:
        change["extend"] = extend
    if replace:
        change["replace"] = replace
    if old_title != new_title:
        change["title"] = (new_title or {}).get("text", "")
    return change or None
