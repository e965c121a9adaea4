"""Whether a stage trains, decided in one place."""

from __future__ import annotations


def trains(num_epochs: object, num_steps: object) -> bool:
    """Whether a stage trains: it has epochs or steps to do. The one place this is
    decided (validation, assembly and the loop ask here); values of the wrong type, which
    the schema reports, count as none."""
    return any(
        isinstance(count, int) and not isinstance(count, bool) and count > 0
        for count in (num_epochs, num_steps)
    )
