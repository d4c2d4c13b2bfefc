"""search_workers: how many search workers a ``tune`` runs and how they watch each other.

Mounted as ``Params.search_workers``; not part of the study's identity (machines with
different worker counts join the same study).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mlplatform.strict import Strict


class WorkersSettings(Strict):
    """search_workers: parallel search (``mlplatform tune --workers N``).

    ``workers`` unset (and no ``--workers`` / ``MLPLATFORM_TUNE_WORKERS``) keeps the single
    search of one process. ``threads`` unset = cores // workers for each worker.
    """

    workers: Annotated[int, Field(ge=1)] | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    heartbeat_interval_s: Annotated[int, Field(ge=1)] = Field(
        default=10, description="RDB storage: how often a running trial says it is alive"
    )
    grace_period_s: Annotated[int, Field(ge=2)] = Field(
        default=30, description="RDB storage: a trial silent this long is failed and retried"
    )
