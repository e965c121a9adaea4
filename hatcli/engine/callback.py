"""The callback protocol: named loop events with one context object (as in Lightning)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hatcli.engine.context import LoopContext


class Callback:
    """Base class; override the events you need.

    ``order`` sorts callbacks before a run (stable, lower first): evaluation (0)
    comes before whatever reads its metrics, such as checkpointing (10).
    """

    order: int = 5

    @property
    def state_key(self) -> str:
        """Names this callback's saved state in a checkpoint (as in Lightning); hat adds
        ``#2``, ``#3`` for repeats. Override it when two instances must differ by more."""
        return type(self).__name__

    def on_loop_begin(self, ctx: LoopContext) -> None: ...

    def on_epoch_begin(self, ctx: LoopContext) -> None: ...

    def on_step_begin(self, ctx: LoopContext) -> None: ...

    def on_step_end(self, ctx: LoopContext) -> None: ...

    def on_epoch_end(self, ctx: LoopContext) -> None: ...

    def on_loop_end(self, ctx: LoopContext) -> None: ...

    def on_interrupt(self, ctx: LoopContext) -> None:
        """A signal stops the run after this step; save what must survive."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must keep across a resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
