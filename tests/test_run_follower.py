"""Reading a run while it is written: `RunFollower` (what each poll returns)
and `kreport.live` (what a page is sent), on real files written through the
run-directory API, torn appends and cut-backs included."""

import os

import numpy as np
import pytest

from kcallbacks.run_directory import RunDirectory
from kcallbacks.run_format import BATCHES_BIN, EVENTS_JSONL, HISTORY_JSONL
from kcallbacks.run_reader import RunFollower, load_run
from kreport import charts
from kreport.analysis import summarize
from kreport.live import BatchLossSeries, LiveRun


def batch_records(run, steps, epoch, loss=0.5):
    dtype = run.open_batch_log()
    records = np.zeros(len(steps), dtype)
    records["step"] = steps
    records["epoch"] = epoch
    records["size"] = 32
    records["loss"] = loss
    return records


def test_each_poll_returns_only_what_was_appended(tmp_path):
    follower = RunFollower(tmp_path / "run")
    first = follower.poll()
    assert not first.exists and not first.changed
    run = RunDirectory(tmp_path / "run", create=True)
    created = follower.poll()
    assert created.exists and created.manifest["status"] == "created"
    for epoch in range(3):
        run.append_history({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
        run.append_batches(batch_records(run, np.arange(4) + 4 * epoch, epoch))
        run.append_event("checkpoint_saved", epoch=epoch, path=f"{epoch}.weights.h5")
        changes = follower.poll()
        assert not changes.reset and changes.manifest is None
        assert [row["epoch"] for row in changes.history_rows] == [epoch]
        assert changes.batches["step"].tolist() == list(range(4 * epoch, 4 * epoch + 4))
        assert [event["epoch"] for event in changes.events] == [epoch]
    assert not follower.poll().changed
    run.update_manifest(status="finished")
    assert follower.poll().manifest["status"] == "finished"


def test_a_half_written_line_or_record_waits_for_the_next_poll(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    records = batch_records(run, [0, 1], 0)
    follower = RunFollower(run.path)
    follower.poll()
    line = b'{"epoch": 0, "loss": 0.5}\n'
    with open(run.file(HISTORY_JSONL), "ab") as f:
        f.write(line[:10])
    with open(run.file(BATCHES_BIN), "ab") as f:
        f.write(records.tobytes()[: records.itemsize + 3])
    changes = follower.poll()
    assert changes.history_rows == [] and changes.warnings == []
    assert changes.batches["step"].tolist() == [0]
    with open(run.file(HISTORY_JSONL), "ab") as f:
        f.write(line[10:])
    with open(run.file(BATCHES_BIN), "ab") as f:
        f.write(records.tobytes()[records.itemsize + 3:])
    changes = follower.poll()
    assert changes.history_rows == [{"epoch": 0, "loss": 0.5}]
    assert changes.batches["step"].tolist() == [1]


def test_a_resume_that_cuts_the_logs_back_is_a_reset(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    for epoch in range(5):
        run.append_history({"epoch": epoch, "loss": float(epoch)})
        run.append_batches(batch_records(run, [2 * epoch, 2 * epoch + 1], epoch))
    follower = RunFollower(run.path)
    assert len(follower.poll().history_rows) == 5
    # A resume from epoch 2, and then the resumed fit gets further than
    # before by the next poll: the sizes alone would not show the cut.
    run.truncate_history(2)
    run.truncate_batches(4)
    for epoch in range(2, 7):
        run.append_history({"epoch": epoch, "loss": 10.0 + epoch})
        run.append_batches(batch_records(run, [2 * epoch, 2 * epoch + 1], epoch, loss=9.0))
    changes = follower.poll()
    assert changes.reset
    assert [row["loss"] for row in changes.history_rows] == [0.0, 1.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    assert changes.batches["step"].tolist() == list(range(14))
    assert not follower.poll().changed
    # The event log cut back in place, then grown past where it was read.
    run.append_event("lr_reduced", epoch=1)
    follower.poll()
    size = run.events_size()
    run.append_event("lr_reduced", epoch=2)
    follower.poll()
    run.truncate_events(size)
    run.append_event("early_stop", epoch=3, monitor="loss", best_epoch=1, best_value=0.1)
    changes = follower.poll()
    assert changes.reset and [e["type"] for e in changes.events] == ["lr_reduced", "early_stop"]


def test_what_it_reads_equals_what_load_run_reads(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    follower = RunFollower(run.path)
    rows, records, events = [], [], []
    for epoch in range(6):
        run.append_history({"epoch": epoch, "loss": float(epoch), "weird": "x"})
        run.append_batches(batch_records(run, [epoch], epoch))
        run.append_event("lr_reduced", epoch=epoch, old=1.0, new=0.5)
        with open(run.file(EVENTS_JSONL), "ab") as f:
            f.write(b"garbage line\n" if epoch == 3 else b"")
        changes = follower.poll()
        rows += changes.history_rows
        records.append(changes.batches)
        events += changes.events
    whole = load_run(run.path)
    assert rows == whole.history.to_dict("records")
    assert np.concatenate(records)["step"].tolist() == whole.batches["step"].tolist()
    assert events == whole.events.to_dict("records")


@pytest.mark.parametrize("max_points", [10, 100, 4000])
def test_the_per_batch_loss_downsampled_as_it_arrives_keeps_what_matters(max_points):
    rng = np.random.default_rng(max_points)
    series = BatchLossSeries(max_points=max_points)
    dtype = np.dtype([("step", "<i8"), ("epoch", "<i4"), ("size", "<i4"), ("loss", "<f4")])
    chunks, start = [], 0
    for epoch in range(40):
        n = int(rng.integers(1, 700))
        chunk = np.zeros(n, dtype)
        chunk["step"] = np.arange(start, start + n)
        chunk["epoch"] = epoch
        chunk["size"] = rng.integers(1, 64, n)
        chunk["loss"] = rng.random(n)
        if epoch == 17:
            chunk["loss"][n // 2] = np.nan
        series.add(chunk)
        chunks.append(chunk)
        start += n
    records = np.concatenate(chunks)
    drawn = series.points()
    assert drawn.total_steps == len(records)
    # Each full bucket gives two points (three with a NaN); the one being
    # filled (the tail) is drawn whole.
    assert len(drawn.steps) <= max_points + 2
    steps = np.concatenate([drawn.steps, drawn.tail_steps[1:]])
    assert drawn.tail_steps[0] == drawn.steps[-1]  # the tail goes on from the full buckets
    assert len(drawn.tail_steps) <= series.size * 2
    assert np.all(np.diff(steps) > 0) and steps[-1] == records["step"][-1]
    losses = records["loss"].astype("f8")
    # The extremes and the NaN survive, each at its own step.
    by_step = dict(zip(steps.tolist(), np.concatenate([drawn.losses, drawn.tail_losses[1:]]).tolist()))
    assert by_step[int(records["step"][np.nanargmax(losses)])] == np.nanmax(losses)
    assert by_step[int(records["step"][np.nanargmin(losses)])] == np.nanmin(losses)
    assert np.isnan(by_step[int(records["step"][np.isnan(losses)][0])])
    for step, loss in by_step.items():
        assert loss == losses[step] or (np.isnan(loss) and np.isnan(losses[step]))
    # Epoch means as the report computes them from the whole log.
    centers, means = charts.epoch_means(records["step"], records["epoch"], losses, records["size"])
    np.testing.assert_allclose(drawn.epoch_centers, centers)
    np.testing.assert_allclose(drawn.epoch_means, means)


def test_a_page_is_sent_new_points_then_redrawn_after_a_cut_back(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    live = LiveRun(run.path, "run", min_interval=0)
    for epoch in range(3):
        run.append_history({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    page = live.update()
    assert page["full"] and [c["key"] for c in page["charts"]] == ["metric:loss"]
    assert page["charts"][0]["figure"]["data"][0]["x"] == [0, 1, 2]
    assert "3" in page["sections"]["facts"]
    at = (page["generation"], page["version"])
    assert live.update(*at)["charts"] == {}  # nothing new: nothing sent
    run.append_history({"epoch": 3, "loss": 0.2})
    run.append_history({"epoch": 4, "loss": 0.1})
    news = live.update(*at)
    assert not news["full"]
    assert news["charts"]["metric:loss"]["extend"] == {0: {"x": [3, 4], "y": [0.2, 0.1]}}
    assert "facts" in news["sections"] and "numbers" in news["sections"]
    # A page two versions behind gets both versions' points, once.
    run.append_history({"epoch": 5, "loss": 0.05})
    live.update(*at)
    run.append_history({"epoch": 6, "loss": 0.04})
    behind = live.update(*at)
    assert behind["charts"]["metric:loss"]["extend"][0]["x"] == [3, 4, 5, 6]
    at = (behind["generation"], behind["version"])
    run.truncate_history(2)
    run.append_event("history_truncated", from_epoch=2)
    redraw = live.update(*at)
    assert redraw["full"] and redraw["charts"][0]["figure"]["data"][0]["x"] == [0, 1]
    # A page from another server (or a stale generation) starts over.
    assert live.update("elsewhere-1", 3)["full"]


def test_a_file_it_cannot_read_is_a_warning_and_the_next_poll_reads_everything(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    run.append_history({"epoch": 0, "loss": 1.0})
    run.append_event("lr_reduced", epoch=0)
    follower = RunFollower(run.path)
    follower.poll()
    run.append_history({"epoch": 1, "loss": 0.5})
    run.append_event("lr_reduced", epoch=1)
    events = run.file(EVENTS_JSONL)
    os.rename(events, events + ".away")
    os.mkdir(events)  # reading it now fails with an OSError
    failed = follower.poll()
    assert not failed.reset and failed.history_rows == [] and failed.events == []
    assert len(failed.warnings) == 1 and "cannot read" in failed.warnings[0]
    os.rmdir(events)
    os.rename(events + ".away", events)
    again = follower.poll()
    assert again.reset  # the failed poll read part of the news: all of it comes again
    assert [row["epoch"] for row in again.history_rows] == [0, 1]
    assert [event["epoch"] for event in again.events] == [0, 1]
    # A path that leads through a file is a warning too, not an exception.
    (tmp_path / "afile").write_text("x")
    assert "cannot read" in RunFollower(tmp_path / "afile" / "run").poll().warnings[0]


def test_what_it_warns_about_it_says_once_and_where(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    with open(run.file("batches.json"), "w") as f:
        f.write('{"columns": [], "dtypes": []}')
    run.append_history({"epoch": 0, "loss": 1.0})
    run.append_history({"epoch": 0, "loss": 0.9})  # a duplicate: the later row counts
    follower = RunFollower(run.path)
    first = follower.poll()
    assert first.history_rows == [{"epoch": 0, "loss": 0.9}]
    assert [w for w in first.warnings if "batch schema" in w] != []
    run.append_history({"epoch": 1, "loss": 0.8})
    assert not any("batch schema" in w for w in follower.poll().warnings)  # said once
    with open(run.file(HISTORY_JSONL), "ab") as f:
        f.write(b"not json\n")
    news = follower.poll()
    assert news.changed and news.warnings == ["history.jsonl: ignored unreadable line 4"]


def test_the_live_page_counts_points_and_warns_as_the_report_does(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    run.append_history({"epoch": 0, "loss": 1.0})
    records = batch_records(run, np.arange(100), 0)
    records["loss"][[10, 20]] = np.nan
    run.append_batches(records)
    live = LiveRun(run.path, "run", min_interval=0)
    page = live.update()
    batch_chart = next(c for c in page["charts"] if c["key"] == "batch-loss")
    assert batch_chart["figure"]["layout"]["title"]["text"] == "Per-batch loss (100 steps)"
    assert [w for w in summarize(load_run(run.path)).warnings if "per-batch" in w] == [
        w for w in live.summary.warnings if "per-batch" in w
    ] == ["per-batch loss is NaN or infinite at 2 steps (first at step 10)"]
