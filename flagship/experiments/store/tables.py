"""Every table of the experiments domain, in one place (queries are in the sibling modules)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel


def _ts(nullable: bool = False, **kwargs: Any) -> Any:
    return Field(default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=nullable, **kwargs))


# -- configuration ------------------------------------------------------------------------------

class LayerRecord(SQLModel, table=True):
    """A traffic layer (试验层): 10,000 buckets hashed with its own salt."""

    __tablename__ = "layers"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    environment: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True,
                                              server_default="production"))
    name: str = ""
    description: str = ""
    salt: str
    version: int
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    updated_by: str


class ExperimentRecord(SQLModel, table=True):
    """An experiment: its configuration document, lifecycle state and bucket ranges.

    `epochs` lists the variant weights in effect over time, `[{"epoch", "since",
    "weights"}]`; each assignment records the epoch it was made in, so the sample-ratio
    test can expect the right split after a mid-run weight change.
    """

    __tablename__ = "experiments"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    environment: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True,
                                              server_default="production"))
    flag_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    layer_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    status: str = Field(index=True)
    version: int
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    ranges: list = Field(sa_column=Column(JSON, nullable=False))
    epochs: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    started_at: Optional[datetime] = _ts(nullable=True)
    ended_at: Optional[datetime] = _ts(nullable=True)
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


class ExperimentRevisionRecord(SQLModel, table=True):
    """One version of an experiment's configuration and state, with its diff."""

    __tablename__ = "experiment_revisions"
    __table_args__ = (sa.UniqueConstraint("experiment_key", "version"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    experiment_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    version: int
    action: str
    actor: str
    created_at: datetime = _ts()
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    diff: list = Field(sa_column=Column(JSON, nullable=False))


class MetricRecord(SQLModel, table=True):
    """A metric definition: which event, aggregated how per unit, and which way is good."""

    __tablename__ = "metrics"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    name: str = ""
    event: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    kind: str
    denominator_event: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    direction: str = "increase"
    winsorize_percentile: Optional[float] = None
    description: str = ""
    version: int
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


# -- data in ------------------------------------------------------------------------------------

class ExposureRecord(SQLModel, table=True):
    """First exposure of a unit to an experiment (and its sticky variant)."""

    __tablename__ = "exposures"
    __table_args__ = (sa.Index("ix_exposures_pending", "experiment_key", "unit",
                               sqlite_where=sa.text("NOT aggregated"),
                               postgresql_where=sa.text("NOT aggregated")),
                      {"sqlite_with_rowid": False})
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    unit: str = Field(sa_column=Column(sa.String(256), primary_key=True, index=True))
    variant: str
    layer_key: str
    assigned_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    epoch: int = Field(default=1, sa_column=Column(sa.Integer, nullable=False, server_default="1"))
    # the aggregator's work queue: exposures whose earlier events are not yet attributed
    aggregated: bool = Field(default=False, sa_column=Column(sa.Boolean, nullable=False,
                                                             server_default=sa.false()))


class EventRecord(SQLModel, table=True):
    """A metric event (or an SDK-sent exposure), stored once per event_id."""

    __tablename__ = "events"
    # every index here is paid on each accepted event: keep only those a query uses
    __table_args__ = (sa.Index("ix_events_pending", "id", sqlite_where=sa.text("NOT aggregated"),
                               postgresql_where=sa.text("NOT aggregated")),
                      sa.Index("ix_events_event_received", "event", "received_at"))
    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    environment: str = Field(sa_column=Column(sa.String(128), nullable=False,
                                              server_default="production"))
    unit: str = Field(sa_column=Column(sa.String(256), nullable=False, index=True))
    event: str = Field(sa_column=Column(sa.String(128), nullable=False))
    value: float
    timestamp: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    received_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    properties: Optional[dict] = Field(default=None, sa_column=Column(JSON))
    # the aggregator's work queue: rows not yet folded into per-unit aggregates
    aggregated: bool = Field(default=False, sa_column=Column(sa.Boolean, nullable=False,
                                                             server_default=sa.false()))


class EventCounterRecord(SQLModel, table=True):
    """Data-quality counters of the whole store per hour: accepted, duplicate, rejected, late."""

    __tablename__ = "event_counters"
    hour: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    kind: str = Field(sa_column=Column(sa.String(16), primary_key=True))
    count: int = 0


class EventIssueRecord(SQLModel, table=True):
    """Duplicate or rejected events per unit and hour (joined with exposures, they are an
    experiment's data-quality counters)."""

    __tablename__ = "event_issues"
    unit: str = Field(sa_column=Column(sa.String(256), primary_key=True))
    hour: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    kind: str = Field(sa_column=Column(sa.String(16), primary_key=True))
    count: int = 0


# -- aggregates ---------------------------------------------------------------------------------

class UnitMetricRecord(SQLModel, table=True):
    """One unit's accumulated values for one metric of one experiment."""

    __tablename__ = "unit_metrics"
    __table_args__ = {"sqlite_with_rowid": False}
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    metric_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    unit: str = Field(sa_column=Column(sa.String(256), primary_key=True))
    variant: str
    post_sum: float = 0.0
    post_count: int = 0
    den_sum: float = 0.0
    den_count: int = 0
    pre_sum: float = 0.0
    pre_count: int = 0
    pre_den_sum: float = 0.0


class VariantSumsRecord(SQLModel, table=True):
    """Changes to the sums over one variant's units of one metric, by the hour they happened.

    `period` is the hour (epoch seconds // 3600) of the events that made the change; the
    sums up to a period are the variant's state at the end of that hour, which is what
    the sequential looks read. `units` counts units with at least one counted event.
    """

    __tablename__ = "variant_sums"
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    metric_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    variant: str = Field(sa_column=Column(sa.String(64), primary_key=True))
    period: int = Field(sa_column=Column(sa.Integer, primary_key=True))
    units: float = 0.0
    sum: float = 0.0
    sum_sq: float = 0.0
    pre_sum: float = 0.0
    pre_sum_sq: float = 0.0
    cross: float = 0.0
    den_sum: float = 0.0
    den_sum_sq: float = 0.0
    num_den: float = 0.0


class ExposureCountRecord(SQLModel, table=True):
    """Exposed units by variant, weight epoch and hour of assignment (kept by the aggregator,
    so the analysis reads O(variants x hours) rows however many units there are)."""

    __tablename__ = "exposure_counts"
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    variant: str = Field(sa_column=Column(sa.String(64), primary_key=True))
    epoch: int = Field(sa_column=Column(sa.Integer, primary_key=True))
    period: int = Field(sa_column=Column(sa.Integer, primary_key=True))
    count: int = 0


class ExperimentQualityRecord(SQLModel, table=True):
    """Events of an experiment's exposed units (at or after exposure) per hour: accepted, late."""

    __tablename__ = "experiment_quality"
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    hour: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    kind: str = Field(sa_column=Column(sa.String(16), primary_key=True))
    count: int = 0


class AnalysisSubjectRecord(SQLModel, table=True):
    """Something besides experiments whose exposures and metrics are aggregated: a rollout
    attempt's two arms. The aggregator reads these next to experiments."""

    __tablename__ = "analysis_subjects"
    key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    environment: str = Field(sa_column=Column(sa.String(128), nullable=False))
    started_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    ended_at: Optional[datetime] = Field(default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    metrics: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class AggregationStateRecord(SQLModel, table=True):
    """The metric definitions an experiment's unit rows were built with."""

    __tablename__ = "aggregation_state"
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    signature: str
