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

import signal
import subprocess
import sys

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


if __name__ == "__main__":
    cli()
