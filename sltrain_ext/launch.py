"""``sltrain-torchrun``: torchrun as a scheduler needs it.

SIGTERM or SIGINT to plain ``torchrun`` is forwarded to the workers, which
finish their step, write one checkpoint and exit with status 75; but torchrun
then raises its own ``SignalException`` and exits with 1, and SIGKILLs workers
still saving after ``--shutdown-timeout`` (30 s by default). This launcher runs
torchrun with a longer shutdown timeout (600 s unless given), forwards the
signal, waits for torchrun to end and exits with 75 (run the same command
again with ``--resume``) when it was stopped by a signal and did not finish
cleanly; otherwise with torchrun's own status.

    sltrain-torchrun --nproc-per-node 8 -m sltrain_ext.train --dist fsdp ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from .preemption import PREEMPTED_EXIT_STATUS

DEFAULT_SHUTDOWN_TIMEOUT_S = 600


def main(argv: list[str]) -> int:
    timeout_given = any(a.split("=")[0] in ("--shutdown-timeout", "--shutdown_timeout") for a in argv)
    command = [sys.executable, "-m", "torch.distributed.run"]
    if not timeout_given:
        command += ["--shutdown-timeout", str(DEFAULT_SHUTDOWN_TIMEOUT_S)]
    launcher = subprocess.Popen(command + argv)
    stopped_by: list[int] = []

    def forward(signum, _frame):
        stopped_by.append(signum)
        launcher.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    status = launcher.wait()
    return PREEMPTED_EXIT_STATUS if stopped_by and status != 0 else status


def cli() -> None:
    sys.exit(main(sys.argv[1:]))


def exit_without_finalizing(run: Callable[[], object]) -> NoReturn:
    """Runs a distributed worker's `run` and ends the process with the status
    the interpreter would give it (0; a SystemExit's code, its message on
    stderr; 1 and the traceback for an exception), but without finalizing the
    interpreter.

    Why: a gloo worker thread may still be destroying a collective that has
    already completed (dropping the last reference to a Python-owned tensor)
    when the main thread reaches finalization; it then needs the GIL, Python
    exits the thread, and the process aborts with "terminate called without an
    active exception" (SIGABRT) after a run that succeeded: 1 run in about 20
    of an FSDP2 job on two CPU ranks here (its core: the destructor of
    c10d's AsyncAllgatherCoalescedWork in ProcessGroupGloo::runLoop, in
    PyThread_exit_thread). Everything a run writes is closed before `run`
    returns; the standard streams are flushed here."""
    status = 0
    try:
        run()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 (reported as the interpreter would)
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    cli()
