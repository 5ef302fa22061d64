"""The search's console line: trial-epochs done out of the most the search can run, with an ETA, the trials
running, finished, stopped early and failed, and the best val mAP so far; printed from the stage's process by
a Ray Tune callback (Tune's own tables are off: ``verbose=0``).

The total is ``trials x max_epochs``; a trial that stops early gives back the epochs it will not run, so the
ETA shrinks as ASHA stops trials instead of overshooting.
"""

from __future__ import annotations

from typing import Any

import ray.tune

from pipelines.train.checkpoints import BEST_BY
from yolov2.progress import Progress


class SearchProgress(ray.tune.Callback):
    """Counts trial-epochs; one :class:`~yolov2.progress.Progress` line at most every few seconds (and a heartbeat).

    Tune pickles its callbacks with the experiment (a restored search unpickles this one): the Progress, with
    its lock and thread, is made in :meth:`setup` and left out of the pickle.
    """

    def __init__(self, num_trials: int, max_epochs: int) -> None:
        self.num_trials, self.max_epochs = num_trials, max_epochs
        self.epochs: dict[str, int] = {}
        self.outcome: dict[str, str] = {}
        self.best = float("nan")
        self.progress: Progress | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}

    def setup(self, **info: Any) -> None:
        self.progress = Progress("tune", self.num_trials * self.max_epochs, "trial-epochs", heartbeat=True).start()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        self.epochs[trial.trial_id] = int(result.get("epoch", 0))
        value = result.get(BEST_BY)
        if isinstance(value, (int, float)) and not value <= self.best:
            self.best = float(value)
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        self.outcome[trial.trial_id] = "finished" if result.get("training_done") else "stopped early"
        self._show(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.outcome[trial.trial_id] = "failed"
        self._show(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.progress is not None:
            self.progress.close()

    def _show(self, trials: list) -> None:
        if self.progress is None:
            return
        outcomes = list(self.outcome.values())
        # an ended trial counts all its epochs: those it ran and those it will never run
        done = sum(self.max_epochs if tid in self.outcome else n for tid, n in self.epochs.items())
        done += sum(self.max_epochs for tid in self.outcome if tid not in self.epochs)
        running = sum(1 for t in trials if t.status == "RUNNING")
        best = "" if self.best != self.best else f", best {BEST_BY} {self.best:.4f}"
        self.progress.desc = (
            f"{len(self.outcome)}/{self.num_trials} trials ended ({outcomes.count('finished')} finished, "
            f"{outcomes.count('stopped early')} stopped early, {outcomes.count('failed')} failed), "
            f"{running} running{best}"
        )
        self.progress.update(min(done, self.num_trials * self.max_epochs))
