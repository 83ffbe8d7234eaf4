"""A progress bar over the steps of a command that takes more than a moment (``vitlab report``, ``inspect``,
``export``): each step's name is shown while it runs, on stderr, and only on a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


@contextmanager
def steps(description: str, total: int, enabled: bool | None = None, file=None) -> Iterator[Callable[[str], None]]:
    """``with steps("report", 4) as step: step("evaluating"); ...``: each call finishes the step before it.
    ``enabled`` None: shown when the output (stderr) is a terminal."""
    bar = tqdm(total=total, desc=description, unit="step", leave=True, dynamic_ncols=True, file=file,
               disable=None if enabled is None else not enabled)
    started = False

    def step(name: str) -> None:
        nonlocal started
        if started:
            bar.update(1)
        started = True
        bar.set_postfix_str(name)

    try:
        yield step
        if started:
            bar.update(1)
    finally:
        bar.close()
