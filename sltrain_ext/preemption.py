"""Stopping sltrain-train cleanly when the machine is taken away.

SIGTERM (what schedulers and torchrun send before killing) and SIGINT
(Ctrl-C) no longer kill the run: the step in flight finishes, a checkpoint
is written, and the process exits with PREEMPTED_EXIT_STATUS, after which
the same command with --resume continues exactly. Further signals while it
stops are ignored, and a checkpoint replaces the previous one only once
complete, so even a SIGKILL during the save leaves the last one loadable.
Under torchrun every rank learns of a signal that reached any of them at the
end of the same step, so all stop at one step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch

__all__ = ["PREEMPTED_EXIT_STATUS", "StopOnSignal"]

# EX_TEMPFAIL of sysexits.h: "try again later" (with --resume).
PREEMPTED_EXIT_STATUS = 75

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: while active, SIGTERM and SIGINT only set a flag that
    `requested()` reports (agreed across ranks). Handlers are restored on exit.
    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = number

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"

    def requested(self, device: torch.device) -> bool:
        """Whether to stop after this step; collective under torch.distributed."""
        stop = self.received is not None
        if torch.distributed.is_initialized():
            flag = torch.tensor([int(stop)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop
