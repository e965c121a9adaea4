"""The callback contract: named loop events with one context object (as in Lightning)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hatcli.engine.checkpoint_files import CheckpointFiles
    from hatcli.engine.context import LoopContext


class Callback:
    """What a ``hat_register_callbacks`` factory returns: subclass it and override the
    events you need; every member has a default that does nothing.

    The loop calls, for each callback in ``order``: ``on_loop_begin``, then per epoch
    ``on_epoch_begin``, per batch ``on_step_begin`` / ``on_step_end``, then
    ``on_epoch_end``, and at last ``on_loop_end``. Each event gets the stage's
    ``LoopContext``: the model, optimizer, position (``epoch``, ``global_step``,
    ``step_in_epoch``), the latest ``metrics``, and ``log()``. A stage resumed mid-epoch
    starts with ``on_loop_begin`` and ``on_epoch_begin`` again at its saved position.
    """

    order: int = 5
    """Callbacks run sorted by ``order`` (stable, lower first): evaluation (0) comes
    before whatever reads its metrics, such as checkpointing (10)."""

    @property
    def state_key(self) -> str:
        """Names this callback's saved state in a checkpoint (as in Lightning); hat adds
        ``#2``, ``#3`` for repeats. Override it when two instances must differ by more."""
        return type(self).__name__

    def check(self, ctx: LoopContext) -> None:
        """Once the stage is assembled, before any event: raise
        ``hatcli.errors.InputError`` to reject this callback's settings against the stage
        (a data split it needs, a module name). hat reports the message located at the
        callback in the spec and runs nothing."""

    def metric_names(self) -> list[str]:
        """The keys this callback puts in ``ctx.metrics``, so that a ``Checkpoint``'s
        ``monitor_metric_key`` can be checked before training; none by default."""
        return []

    def checkpoint_files(self, stage: str, work_dir: Path) -> CheckpointFiles | None:
        """The checkpoint files this callback writes in ``stage`` (``None``: it writes
        none). ``hat resume`` continues from them and ``hat export`` exports what they
        hold; ``work_dir`` is the spec's."""
        return None

    def on_loop_begin(self, ctx: LoopContext) -> None:
        """Before the first batch (also when a resumed run starts)."""

    def on_epoch_begin(self, ctx: LoopContext) -> None:
        """Before the first batch of an epoch (the resumed epoch's next batch on resume)."""

    def on_step_begin(self, ctx: LoopContext) -> None:
        """Before a batch; ``ctx.global_step`` counts the batches already trained."""

    def on_step_end(self, ctx: LoopContext) -> None:
        """After a batch's optimizer step; ``ctx.global_step`` now includes it and
        ``ctx.loss`` is its loss."""

    def on_epoch_end(self, ctx: LoopContext) -> None:
        """After an epoch's last batch (``ctx.step_in_epoch == 0`` and ``ctx.epoch``
        counts it), or after a stage of ``num_steps`` stopped within an epoch."""

    def on_loop_end(self, ctx: LoopContext) -> None:
        """After the last batch and the trainer's ``end_loop``; ``ctx.finished`` is true.
        A stage with ``num_epochs: 0`` gets only ``on_loop_begin`` and this."""

    def on_interrupt(self, ctx: LoopContext) -> None:
        """A signal stops the run after this step; save what must survive."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must keep across a resume (saved in every checkpoint under
        ``state_key``); only numbers, strings, lists, dicts and tensors."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` gave when a stage continues from a checkpoint
        (after ``check``, before ``on_loop_begin``)."""
