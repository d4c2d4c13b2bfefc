"""The base of every params section: unknown keys are errors, values are frozen.

Its own module so that each room's settings (monitoring, serving, team, ...) can subclass it
and ``config`` can gather them into ``Params`` without an import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors, so a typo in params.yaml never passes silently.

    Types are strict too: ``n_trials: true`` or ``"6"`` is not an int and ``"yes"`` is not
    a bool (an int is still accepted where a float is expected).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
