"""Params sections of the release path: shadow deployment, A/B test and sign-offs by role.

Each model is a ``Strict`` pydantic model (unknown keys are errors) with defaults, so an
empty section in params.yaml means: the defaults for shadow and A/B, no sign-offs required.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mlplatform.strict import Strict

# Stages a version passes through on its way to users (the fields of SignoffConfig).
STAGES = ("shadow", "ab", "champion")

# Per-request metrics an A/B test can compare once labels arrive (see serving.ab).
PROPORTION_METRICS = ("accuracy", "outcome_rate")
CONTINUOUS_METRICS = ("log_loss", "brier")
ABMetric = Literal["accuracy", "outcome_rate", "log_loss", "brier"]
Probability = Annotated[float, Field(ge=0, le=1)]


class ShadowConfig(Strict):
    """Limits for a shadow deployment and the gate figures it produces."""

    min_agreement: Probability = Field(
        0.95, description="Least share of compared rows where both models predict the same class"
    )
    max_positive_rate_shift: Probability = Field(
        0.05, description="Largest |challenger - champion| predicted-positive rate"
    )
    min_rows: Annotated[int, Field(ge=1)] = Field(
        500, description="Rows both models scored before the shadow figures can pass a gate"
    )
    challenger_timeout_ms: Annotated[float, Field(gt=0, le=60_000)] = Field(
        50.0,
        description="The answer never waits longer than this for the challenger; a "
        "challenger slower than this counts as a failure for that row",
    )
    max_challenger_failure_rate: Probability = Field(
        0.01, description="Largest share of rows the challenger failed or timed out on"
    )
    top_k: Annotated[int, Field(ge=0, le=1000)] = Field(
        20, description="Rows where the two disagree most, listed in the report"
    )
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95


class ABConfig(Strict):
    """A fixed-horizon A/B test between the champion and a challenger.

    The sample size is planned from ``alpha``, ``power``, ``min_detectable_effect`` and the
    expected champion value of the metric (``baseline``; ``baseline_sd`` for log_loss and
    brier). Left unset, they are estimated from both arms pooled (a blinded estimate that
    does not look at the difference between the arms).
    """

    challenger_share: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="Share of requests answered by the challenger"
    )
    key_column: str | None = Field(
        None,
        min_length=1,
        description="Input column whose value picks the arm (e.g. a customer id, so one "
        "customer always meets the same model); unset: the request id",
    )
    salt: str = Field(
        "mlplatform-ab",
        min_length=1,
        description="Mixed into the hash; a new salt reshuffles who gets which arm",
    )
    primary_metric: ABMetric = Field(
        "accuracy",
        description="accuracy or outcome_rate (proportions, higher is better), log_loss or "
        "brier (per-row losses, lower is better)",
    )
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    power: Annotated[float, Field(gt=0.5, lt=1)] = 0.8
    min_detectable_effect: Annotated[float, Field(gt=0)] = Field(
        0.02, description="Smallest absolute difference in the primary metric worth detecting"
    )
    test: Literal["auto", "two_proportion_z", "welch_t"] = Field(
        "auto", description="auto: the z-test for proportions, Welch's t-test for losses"
    )
    baseline: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None, description="Expected champion value of a proportion metric, to plan the size"
    )
    baseline_sd: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Expected per-row standard deviation of a loss metric"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ABConfig:
        proportion = self.primary_metric in PROPORTION_METRICS
        if self.test == "two_proportion_z" and not proportion:
            raise ValueError(
                f"test two_proportion_z needs a proportion metric "
                f"({', '.join(PROPORTION_METRICS)}), not {self.primary_metric}"
            )
        if proportion and self.min_detectable_effect >= 1:
            raise ValueError("min_detectable_effect of a proportion must be below 1")
        if self.baseline is not None:
            if not proportion:
                raise ValueError(
                    f"baseline applies to proportions; use baseline_sd for {self.primary_metric}"
                )
            up = self.baseline + self.min_detectable_effect
            down = self.baseline - self.min_detectable_effect
            if up >= 1 and down <= 0:
                raise ValueError(
                    f"baseline {self.baseline} +/- min_detectable_effect "
                    f"{self.min_detectable_effect} leaves (0, 1)"
                )
        if self.baseline_sd is not None and proportion:
            raise ValueError(
                f"baseline_sd applies to losses; use baseline for {self.primary_metric}"
            )
        return self

    @property
    def test_kind(self) -> Literal["two_proportion_z", "welch_t"]:
        """The test that ``auto`` stands for with this metric."""
        if self.test != "auto":
            return self.test
        return "two_proportion_z" if self.primary_metric in PROPORTION_METRICS else "welch_t"


class StageSignoffs(Strict):
    """Who must sign off before a version passes one stage."""

    required: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Roles that must each approve"
    )
    allowed: dict[str, list[Annotated[str, Field(min_length=1)]]] = Field(
        default_factory=dict, description="For each role, the people who may give it"
    )

    @model_validator(mode="after")
    def _roles_have_people(self) -> StageSignoffs:
        seen: set[str] = set()
        for role in self.required:
            if role in seen:
                raise ValueError(f"role {role!r} is listed twice in required")
            seen.add(role)
            if not self.allowed.get(role):
                raise ValueError(f"required role {role!r} has no allowed people")
        extra = sorted(set(self.allowed) - seen)
        if extra:
            # A role nobody requires can never matter: most likely a typo in `required`.
            raise ValueError(f"allowed lists role(s) not in required: {', '.join(extra)}")
        return self


class SignoffConfig(Strict):
    """Sign-offs by role, per promotion stage. Nothing listed: no sign-offs required.

    Example (params.yaml)::

        signoffs:
          champion:
            required: [technical, model_risk]
            allowed: {technical: [ann, bob], model_risk: [cara]}
    """

    shadow: StageSignoffs = Field(default_factory=StageSignoffs)
    ab: StageSignoffs = Field(default_factory=StageSignoffs)
    champion: StageSignoffs = Field(default_factory=StageSignoffs)

    def for_stage(self, stage: str) -> StageSignoffs:
        """The section of one stage (shadow, ab or champion).

        Raises:
            KeyError: not one of the stages.
        """
        if stage not in STAGES:
            raise KeyError(stage)
        return getattr(self, stage)


class ReleaseSettings(Strict):
    """The ``release`` params section: shadow, A/B and sign-offs, mounted as one field."""

    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    ab: ABConfig = Field(default_factory=ABConfig)
    signoffs: SignoffConfig = Field(default_factory=SignoffConfig)
    gate_uses_shadow: bool = Field(
        False,
        description="promote adds the shadow rules (agreement, positive-rate shift, "
        "failures) from the candidate's latest `mlplatform shadow` report",
    )
