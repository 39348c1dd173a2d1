"""Signals over commit points: a result is either not made, or made and reported, whatever arrives.

A commit point is the few lines that make a result real and tell the caller so: the store's rename of an
artifact into place, the append of an edit's record and the printing of its path. `held()` keeps SIGINT and
SIGTERM off those lines; one that arrives meanwhile is delivered as the block ends, to the handler installed
then. What an interrupt means after a commit (tav finishes and exits 0) is the CLI's to say, in its handler.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Run the block without SIGINT/SIGTERM; one that arrived is delivered when it ends (or when it raises)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread runs handlers
        yield
        return
    arrived: list[int] = []
    previous = {}
    try:
        for signum in HELD:
            previous[signum] = signal.signal(signum, lambda s, _frame: arrived.append(s))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)  # to the handler now installed: the caller's policy, or Python's default
