"""SIGINT/SIGTERM during training: finish the step, save, stop; a second signal stops at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

from hatcli.errors import HatError

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(HatError):
    """The run stopped on a signal after saving its state; exit code 128 + signal."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum = signum
        self.step = step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; the last checkpoint holds it")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulInterrupt:
    """Within ``with``: the first signal is remembered for the loop to act on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # Every file hat writes is replaced atomically, so stopping here corrupts nothing.
            print(f"\n{signal.Signals(signum).name} again: stopping now", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and saving "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
