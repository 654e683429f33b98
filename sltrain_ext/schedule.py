"""The learning-rate schedule of sltrain-train, and what extending a run to
more steps does to it.

A run's schedule: a linear warm-up over ``int(warmup * steps)`` steps (the
first step at one step's worth), then a cosine decay from the peak to
``floor`` times the peak at step ``steps``.

Extending a run from step ``k`` to a larger total ``M`` (``--resume --steps
M``) keeps every step already trained and re-fits what is left: from step
``k`` the factor decays along a half cosine from the value it had at ``k`` to
the floor at ``M``. The learning rate is continuous at ``k`` (no re-warm-up,
no jump), and the decay still ends at the end of the run. A finished run is
at the floor, so it goes on at the floor; a run stopped during its warm-up
finishes the warm-up it began with (its length does not change) and its
cosine runs from the peak to the floor at ``M``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["LearningRateSchedule", "resumed_schedule"]


@dataclasses.dataclass
class LearningRateSchedule:
    """The learning-rate factor of each optimizer step (counted from 0):
    ``schedule(step)`` times the peak learning rate. The fields are what a
    checkpoint records (``state()``), so a resumed run follows the schedule
    it was saved under, extended or not."""

    warmup_steps: int
    floor: float
    total: int
    # The decay: a half cosine from `decay_factor` at `decay_start` to `floor` at `total`.
    decay_start: int
    decay_factor: float = 1.0

    @classmethod
    def fresh(cls, steps: int, warmup_fraction: float, floor: float) -> LearningRateSchedule:
        warmup_steps = int(warmup_fraction * steps)
        return cls(warmup_steps=warmup_steps, floor=floor, total=steps, decay_start=warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.decay_start) / max(1, self.total - self.decay_start)
        return self.floor + (self.decay_factor - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def extended(self, from_step: int, total: int) -> LearningRateSchedule:
        """This schedule from `from_step` (the next step to train) on, re-fitted to end at `total`."""
        if total < self.total:
            raise ValueError(f"a schedule of {self.total} steps cannot be shortened to {total}")
        if from_step < self.warmup_steps:
            return dataclasses.replace(self, total=total)
        return dataclasses.replace(self, total=total, decay_start=from_step, decay_factor=self(from_step))

    def describe(self) -> str:
        if self.decay_start == self.warmup_steps and self.decay_factor == 1.0:
            warmup = f"linear warm-up over {self.warmup_steps} steps, then " if self.warmup_steps else ""
            return f"{warmup}cosine decay from the peak learning rate to {self.floor:g} of it at step {self.total}"
        if self.decay_factor == self.floor:
            return (f"from step {self.decay_start}: constant at the floor, {self.floor:g} of the peak learning "
                    f"rate, to step {self.total}")
        return (f"from step {self.decay_start}: cosine decay from {self.decay_factor:.6g} of the peak learning "
                f"rate to {self.floor:g} of it at step {self.total}")

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resumed_schedule(saved: dict[str, Any] | None, saved_steps: int, warmup_fraction: float, floor: float,
                     from_step: int, steps: int) -> tuple[LearningRateSchedule, dict[str, Any] | None]:
    """The schedule a run resumed at `from_step` with `--steps steps` follows:
    the one its checkpoint saved (`saved`; None for a checkpoint written
    before schedules were saved, whose run had the base schedule of
    `saved_steps`), extended to `steps` when that is more. The second value
    records the extension, or is None when there is none."""
    before = LearningRateSchedule(**saved) if saved else LearningRateSchedule.fresh(saved_steps, warmup_fraction,
                                                                                     floor)
    if steps == before.total:
        return before, None
    after = before.extended(from_step, steps)
    return after, {"from_step": from_step, "steps_before": before.total, "steps_after": steps,
                   "schedule_before": before.describe(), "schedule_after": after.describe()}
