"""One write at a time in a background thread, errors handed back."""

import threading
import warnings


class BackgroundWriter:
    """Runs one job at a time in a background thread. A job's error is
    raised on the training thread by the next `submit()` or `wait()`."""

    def __init__(self, name):
        self.name = name
        self._thread = None
        self._error = None

    def submit(self, job):
        self.wait()

        def run():
            try:
                job()
            except BaseException as error:  # handed to the training thread
                self._error = error

        # Not a daemon: a write in flight when the program ends is finished.
        self._thread = threading.Thread(target=run, name=self.name)
        self._thread.start()

    def wait(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def finish_leftover(self):
        """Waits for a write left by an earlier, interrupted fit; its error,
        if any, is a warning: that fit is over and this one goes on."""
        try:
            self.wait()
        except Exception as error:
            warnings.warn(f"{self.name}: a background write of an earlier fit failed: {error}",
                          stacklevel=3)
