"""How jobs report progress: a `Reporter` told of `Stage`s and steps; the CLI draws it, bench times it.

Stages are an enum, not text, so that `tav bench` keys on what a stage is and rewording what users
read cannot break it.
"""

from __future__ import annotations

from enum import Enum


class Stage(Enum):
    """A job's stages; the value is how a user reads it, `{}` standing for the detail (a name, a prompt)."""

    LOADING = "loading {}"
    READING = "reading {}"
    TUNING = "tuning"
    INVERTING = "inverting"
    SAVING = "saving"
    EDITING = "editing: {}"
    WRITING = "writing {}"
    SCORING = "scoring {}"

    def describe(self, detail: str = "") -> str:
        return self.value.format(detail) if "{}" in self.value else self.value


class Reporter:
    """Progress sink: the CLI overrides these; the defaults are silent."""

    def stage(self, stage: Stage, detail: str = "", total: int | None = None) -> None: ...

    def step(self, i: int, loss: float | None = None) -> None: ...

    def detail(self, text: str) -> None:
        """What the current stage is doing beside its count (the preview rendering while tuning)."""

    def log(self, message: str) -> None: ...
