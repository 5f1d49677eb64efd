"""Signals that ask a fit to stop: noted when they come, acted on at a step.

A scheduler takes a machine away with SIGTERM and a grace period before
SIGKILL (SLURM, Kubernetes, spot VMs); a person presses Ctrl-C (SIGINT).
`SignalWatch` installs handlers for the duration of a fit that only note
the signal: `BackupAndRestore` then snapshots at the next step boundary and
ends the process the conventional way (`end_for_signal`). Python runs signal
handlers on the main thread only, so off the main thread nothing is
installed and the signals keep their usual effect.
"""

import os
import signal
import sys
import threading

DEFAULT_SIGNALS = ("SIGTERM", "SIGINT")


def resolve_signals(signals):
    """The `signal.Signals` that `signals` names: True for the defaults
    (SIGTERM and SIGINT), None/False/() for none, else names ("SIGUSR1") or
    numbers. Raises ValueError naming what is not a signal."""
    if signals is True:
        signals = DEFAULT_SIGNALS
    if signals is None or signals is False:
        return ()
    if isinstance(signals, (str, int)):
        signals = (signals,)
    resolved = []
    for item in signals:
        try:
            if isinstance(item, str):
                name = item.upper()
                found = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
            else:
                found = signal.Signals(item)
        except (KeyError, ValueError, TypeError):
            raise ValueError(
                f"BackupAndRestore: preemption_signals has {item!r}, which is not a "
                "signal (use names such as 'SIGTERM' or signal.SIGUSR1)"
            ) from None
        if found in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(
                f"BackupAndRestore: preemption_signals has {found.name}, which cannot be caught"
            )
        if found not in resolved:
            resolved.append(found)
    return tuple(resolved)


class SignalWatch:
    """Handlers that note the first of `signals` (`received`) and count the
    ones after it (`repeats`), installed by `install()` and put back by
    `uninstall()`."""

    def __init__(self, signals):
        self.signals = signals
        self.received = None
        self.repeats = 0
        self._previous = {}
        self._installed = False
        self._still_watching = None

    def install(self, still_watching):
        """Installs the handlers; returns why it did not, or None.
        `still_watching(frame)` tells a handler whether the fit it watches
        is still running: a fit that ended with an exception never calls
        `uninstall()`, and a signal after it gets its old handler.
        A signal the process ignores (`nohup`, a parent's choice) stays
        ignored."""
        self.received, self.repeats = None, 0
        if not self.signals:
            return None
        if threading.current_thread() is not threading.main_thread():
            return "fit runs off the main thread, where Python cannot handle signals"
        frame = sys._getframe()
        previous = {}
        for sig in self.signals:
            handler = self._handler_before(signal.getsignal(sig), sig, frame)
            if handler is signal.SIG_IGN or handler is None:
                continue  # ignored, or a handler not installed from Python
            previous[sig] = handler
        # Read above before replaced here: a handler this watch left behind
        # stands for the one it had replaced.
        self._previous = previous
        self._still_watching = still_watching
        for sig in previous:
            signal.signal(sig, self._note)
        self._installed = True
        return None

    def _handler_before(self, handler, sig, frame):
        """`handler`, or, if it is a watch's handler left behind by a fit
        that ended with an exception (this watch's own, or another's), the
        handler that one replaced."""
        while getattr(handler, "__func__", None) is SignalWatch._note:
            watch = handler.__self__
            if watch is not self and watch._installed and watch._still_watching(frame):
                return handler  # the watch of an enclosing fit, still running
            handler = watch._previous.get(sig, signal.SIG_DFL)
        return handler

    def uninstall(self):
        """Puts the previous handlers back (those still ours)."""
        if not self._installed:
            return
        self._installed = False
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._note:  # not replaced since by someone else
                signal.signal(sig, previous)

    def previous_handler(self, sig):
        """The handler `sig` had before `install()`."""
        return self._previous.get(sig, signal.SIG_DFL)

    def _note(self, signum, frame):
        if not self._still_watching(frame):
            self.uninstall()
            _deliver(signum, frame, self.previous_handler(signum))
            return
        # Only a note: the snapshot is taken at the next step boundary, and
        # a signal during that snapshot must not interrupt its writing.
        if self.received is None:
            self.received = signal.Signals(signum)
        else:
            self.repeats += 1


def _deliver(signum, frame, handler):
    """What `signum` would have done under `handler`."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def end_for_signal(sig, previous_handler, exit_code, message):
    """Ends the fit as `sig` would have, now that the state is saved: the
    user's own handler runs first (if it returns, the ending goes on);
    SIGINT raises KeyboardInterrupt, so a notebook keeps its kernel; any
    other signal exits with `exit_code` (default 128 + the signal number:
    143 for SIGTERM, what a scheduler reads as killed by that signal)."""
    if callable(previous_handler) and previous_handler is not signal.default_int_handler:
        previous_handler(int(sig), None)
    if sig == signal.SIGINT:
        raise KeyboardInterrupt(message)
    raise SystemExit(128 + int(sig) if exit_code is None else exit_code)
