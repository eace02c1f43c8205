"""Clean stops on Ctrl-C and SIGTERM: finish the current step, checkpoint it, say how to continue.

While a trainer runs inside `StopSignals`, the first SIGINT or SIGTERM only sets `requested`; the loop checks it
after each completed step, saves a checkpoint of that step and raises `Interrupted`, which the CLI turns into one
line (`interrupted at step N; continue with: ... --resume`) and exit code 128 + signal (130, 143). A second signal
stops at once (KeyboardInterrupt): the run then continues from its last saved checkpoint.
"""

from __future__ import annotations

import signal
import threading


class Interrupted(Exception):
    """A run stopped by a signal after saving step `step`."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step} ({signal.Signals(signum).name})")
        self.step, self.signum = step, signum


class StopSignals:
    """Context manager: SIGINT / SIGTERM request a stop (`requested` holds the first signal's number)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # a second signal: stop now, without waiting for the step to end
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set from the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
