"""The one owner of checkpoint file names: where a checkpointing callback writes, and
what ``hat resume`` and ``hat export`` look for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".pth.tar"


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpointing callback: ``{folder}/{prefix}checkpoint-{which}.pth.tar``
    for ``last``, ``best`` and the interval ones (``step-N``, ``epoch-N``)."""

    folder: Path
    prefix: str
    saves_last: bool = True
    saves_best: bool = True

    def path(self, which: str) -> Path:
        return self.folder / f"{self.prefix}checkpoint-{which}{SUFFIX}"

    @property
    def last(self) -> Path:
        return self.path("last")

    @property
    def best(self) -> Path:
        return self.path("best")

    @property
    def names(self) -> re.Pattern[str]:
        """Every file name these files may have."""
        which = r"(last|best|step-\d+|epoch-\d+)"
        return re.compile(re.escape(self.prefix) + "checkpoint-" + which + re.escape(SUFFIX))

    def intervals(self) -> list[Path]:
        """The interval checkpoints there are, newest (highest step or epoch) first."""
        if not self.folder.is_dir():
            return []
        pattern = re.compile(
            re.escape(self.prefix) + r"checkpoint-(step|epoch)-(\d+)" + re.escape(SUFFIX)
        )
        found = [
            (int(m.group(2)), p) for p in self.folder.iterdir() if (m := pattern.fullmatch(p.name))
        ]
        return [p for _, p in sorted(found, reverse=True)]

    def resume_candidates(self) -> list[Path]:
        """Preferred first: last, the interval ones (newest first), best."""
        return [self.last, *self.intervals(), self.best]

    def trained_weights(self) -> Path:
        """What the stage produced: ``best`` if written and there, else ``last``."""
        kept = ((self.best, self.saves_best), (self.last, self.saves_last))
        wanted = [path for path, written in kept if written]
        return next((p for p in wanted if p.exists()), wanted[0] if wanted else self.last)
