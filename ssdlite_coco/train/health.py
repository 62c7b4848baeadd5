"""Training health: stop a run whose loss is not finite or stays far above its first value.

``LossGuard`` is fed every iteration's loss. A NaN or infinite loss is a verdict at once. Otherwise the
losses are averaged over display windows (iterations ``[k * window, (k + 1) * window)``, the ones the
progress lines cover) and each window's mean is compared with ``factor`` times the *first value*: the loss
of iteration 0, computed with the initial weights before any update, so it does not depend on the learning
rate. (The mean of the first window would: on the tiny test net a base_lr of 50 takes the loss from 25 to
10,000 within the first 5 iterations, so the first window is already diverged, and later ones are only 2 to
4 times it.) ``displays`` windows in a row above the limit are a verdict; a window under it ends the streak,
so a spike that recovers sooner goes on. ``factor`` 0 turns the growth check off (a non-finite loss still
stops the run: nothing can be trained from it).

The guard is a function of the loss sequence alone, so a resumed run replays the restored log rows
(``replay``) and decides as the uninterrupted run would.

Keeping the last good snapshot: the runner takes a snapshot only while the guard is ``healthy`` (no window
above the limit since the last one under it, and the window in progress not above it either). A snapshot
that falls due otherwise waits for the first healthy iteration after it, so a snapshot of a diverging state
is never written, ``latest.json`` keeps pointing at the last one taken while the loss was fine, and none is
written after a verdict. (The alternative, snapshotting as usual and pointing ``latest.json`` back on a
verdict, would write diverged snapshots that ``keep_snapshots`` pruning could let replace the good ones.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# what the divergence message offers besides a lower base_lr (config/schema.yaml's solver section)
WARMUP_KEYS = ("solver.warmup_iter", "solver.warmup_start_factor")


def settings_problem(factor: float, displays: int) -> str | None:
    """Why ``train.divergence_factor`` / ``train.divergence_displays`` cannot be used, or None."""
    if not factor >= 0:
        return f"train.divergence_factor is {factor}; it must be >= 0 (0 turns the divergence check off)"
    if displays < 1:
        return f"train.divergence_displays is {displays}; it must be >= 1"
    return None


class LossGuard:
    """Decides from each iteration's loss whether training has diverged (see the module docstring)."""

    def __init__(self, factor: float, displays: int, window: int):
        self.factor = factor
        self.displays = displays
        self.window = max(1, window)
        self.first: float | None = None  # the loss of iteration 0
        self.streak = 0  # windows in a row above the limit
        self.warning: str | None = None  # set by update when a window ends above the limit without a verdict
        self._sum = 0.0
        self._count = 0

    @property
    def limit(self) -> float | None:
        """The window mean above which a window counts as diverged (None: the growth check is off)."""
        if not self.factor or self.first is None or self.first <= 0:
            return None
        return self.factor * self.first

    @property
    def healthy(self) -> bool:
        """No window above the limit since the last one under it, and the window in progress not above it."""
        limit = self.limit
        if limit is None:
            return True
        return self.streak == 0 and (self._count == 0 or self._sum / self._count <= limit)

    def update(self, iteration: int, loss: float) -> str | None:
        """Take the loss of ``iteration``; return the verdict (what went wrong, one clause) or None."""
        self.warning = None
        if not math.isfinite(loss):
            first = f" (the first iteration's was {self.first:.4g})" if self.first is not None else ""
            return f"the loss is {loss} at iteration {iteration}{first}"
        if self.first is None:
            self.first = loss
        self._sum += loss
        self._count += 1
        if (iteration + 1) % self.window:
            return None
        mean, start = self._sum / self._count, iteration + 1 - self._count
        self._sum, self._count = 0.0, 0
        limit = self.limit
        if limit is None or mean <= limit:
            self.streak = 0
            return None
        self.streak += 1
        above = (
            f"the loss averaged {mean:.4g} over iterations {start}-{iteration}, "
            f"{mean / self.first:.3g}x the first iteration's {self.first:.4g}"
        )
        if self.streak >= self.displays:
            return (
                f"the loss diverged at iteration {iteration}: {above}, "
                f"above {self.factor:g}x for {self.streak} displays in a row"
            )
        self.warning = (
            f"{above}, above train.divergence_factor {self.factor:g} ({self.streak} of the {self.displays} "
            "displays in a row that stop the run; snapshots wait until it falls back)"
        )
        return None

    def replay(self, rows: Iterable[dict[str, Any]]) -> None:
        """Feed the training rows of a resumed run's log (test rows have no loss); verdicts are not repeated."""
        for row in rows:
            if not math.isnan(row["loss"]):
                self.update(int(row["iteration"]), float(row["loss"]))
        self.warning = None


def divergence_message(
    verdict: str, solver_path: Path, base_lr: float, rate: float, snapshot: dict[str, Any] | None
) -> str:
    """The one line that stops a diverged run: the verdict, the keys to change (``rate``: the learning rate of
    the iteration, named when the schedule has moved it off base_lr), the snapshot that is kept."""
    now = f", the rate was {rate:g} then" if not math.isclose(rate, base_lr) else ""
    change = f"lower solver.base_lr (base_lr: {base_lr:g} in {solver_path}{now})"
    change += f" or add warm-up ({', '.join(WARMUP_KEYS)})"
    if snapshot is None:
        kept = "no snapshot was taken before it"
    else:
        kept = f"the last good snapshot is kept: {snapshot['caffemodel']} (iteration {snapshot['iteration']})"
    return f"{verdict}; {change}; {kept}; no final weights were written"
