"""Stopping a search: SIGTERM and Ctrl-C become KeyboardInterrupt, and are remembered.

A signal handler raises wherever the main thread is. When that is Python code that a
library calls from C through ctypes (XGBoost's data iterator that builds the
QuantileDMatrix of every fit), ctypes prints the KeyboardInterrupt and drops it, and the
library then fails with an unrelated error ("Check failed: count <= total_entries"). The
search would record a stopped trial as an error (counted, never retried) and go on as if
no one had asked it to stop. So the handler also sets a flag: a trial that fails while it
is set was stopped (``stopped_by``), and the search loops stop at the next trial
(``raise_if_requested``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from mlplatform.search.trial_runs import ERROR_ATTR, INTERRUPTED_ATTR

_requested = threading.Event()
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def requested() -> bool:
    """Whether SIGTERM or Ctrl-C arrived inside ``signals_as_interrupt``."""
    return _requested.is_set()


def raise_if_requested() -> None:
    """Raise the KeyboardInterrupt a library swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt("stop requested")


def stopped_by(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt an error stands for, if a stop was asked for (else None)."""
    if not _requested.is_set():
        return None
    return KeyboardInterrupt(f"stopped ({type(exc).__name__} raised while stopping)")


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the current trial and parent run are closed as KILLED."""

    def handler(signum: int, frame: Any) -> None:
        _requested.set()
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested.clear()


def guard(run_trial: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """The trial function that records why a trial did not end: an error (``ERROR_ATTR``:
    it counts towards n_trials and is not retried) or a stop (``INTERRUPTED_ATTR``: tried
    again on resume), also when the stop came out of a library as an error."""

    def guarded(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            if (stop := stopped_by(exc)) is not None:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
                raise stop from exc
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:500])
            raise
        except BaseException:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise

    return guarded
