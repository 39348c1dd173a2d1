"""`REF@STEP`: an artifact and one of its kept tuning steps, wherever a ref is accepted.

`slide` is the artifact's final adapter; `slide@100` the adapter it had after 100 steps, kept by
`tav tune --checkpoint-every`. The final step is always kept (`slide@300` is `slide` for a 300-step tune).
Names cannot hold '@' (see the store), so the last '@' splits a ref. Torch-free: the store commands use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tavcli.app.manifest import Manifest
from tavcli.app.store import Artifact, Store
from tavcli.errors import BadInput

_STEP = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Target:
    """An artifact at one tuning step."""

    artifact: Artifact
    manifest: Manifest
    step: int | None  # None only for a model without a known step count (an official import without config)
    final: bool  # the artifact's own adapter ("adapter/"), not a checkpoint

    @property
    def adapter_folder(self) -> str:
        """The adapter's folder inside the artifact."""
        if self.final:
            return "adapter"
        return next(c.folder for c in self.manifest.checkpoints if c.step == self.step)

    @property
    def label(self) -> str:
        """How to name it back to the user: `slide`, `slide@100`."""
        ref = self.artifact.name or self.artifact.short_id
        return ref if self.final else f"{ref}@{self.step}"


def split(text: str) -> tuple[str, int | None]:
    """`slide@100` -> ("slide", 100); `slide` -> ("slide", None); BadInput for a malformed step."""
    if "@" not in text:
        return text, None
    ref, _, step = text.rpartition("@")
    if not ref or not _STEP.fullmatch(step):
        raise BadInput(f"'{text}' is not REF@STEP; give a step number after '@', e.g. '{ref or 'slide'}@100'")
    return ref, int(step)


def kept_steps(manifest: Manifest) -> list[int]:
    """The steps whose adapter an artifact keeps: its checkpoints and its final step."""
    steps = {c.step for c in manifest.checkpoints}
    if manifest.tuning.steps is not None:
        steps.add(manifest.tuning.steps)
    return sorted(steps)


def resolve(store: Store, text: str) -> Target:
    """The artifact and step that `text` (REF or REF@STEP) names; BadInput for a step that was not kept."""
    ref, step = split(text)
    artifact = store.resolve(ref)
    manifest = Manifest.of(artifact)
    final = manifest.tuning.steps
    if step is None or step == final:
        return Target(artifact, manifest, final, final=True)
    if step not in {c.step for c in manifest.checkpoints}:
        kept = ", ".join(str(s) for s in kept_steps(manifest)) or "none"
        raise BadInput(f"{artifact.name or artifact.short_id} kept no adapter at step {step}; its kept steps are "
                       f"{kept} (tune with --checkpoint-every N to keep more)")
    return Target(artifact, manifest, step, final=False)
