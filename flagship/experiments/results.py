"""Experiment results: read the aggregates, then SRM, every metric's comparisons with their
sequential looks, guardrails and a decision (GET /experiments/{key}/results).

A read only: the aggregates are kept up to date by the aggregation job, and the looks are
derived from the hourly sums, so looking never changes the answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flagship.experiments.analysis import compare, decide, looks
from flagship.experiments.analysis.variants import VariantStats, from_sums
from flagship.experiments.model import Experiment, Metric
from flagship.experiments.service import load
from flagship.experiments.store import config, reads, sums
from flagship.experiments.store.tables import ExperimentRecord
from flagship.runtime import Runtime


@dataclass
class Data:
    """Everything the analysis of one experiment reads, from one read transaction."""

    experiment: Experiment
    record: ExperimentRecord
    metrics: dict[str, Metric]
    counts: dict[str, int]
    by_epoch: dict[tuple[int, str], int]
    stats: dict[str, dict[str, VariantStats]]
    looks: dict[str, list[tuple[int, dict[str, VariantStats]]]]
    pending: dict[str, int]


def read(runtime: Runtime, key: str, with_looks: bool = True) -> Data:
    """The experiment and its aggregates (NotFoundError if it does not exist)."""
    experiment, record = load(runtime, key)
    names = experiment.variant_names
    with runtime.db.engine.connect() as conn, conn.begin():
        metrics = config.metrics_by_key(conn, experiment.metric_keys)
        counts = {n: 0 for n in names} | reads.exposure_counts(conn, key)
        by_hour = reads.exposures_by_hour(conn, key) if with_looks else {}
        stats, series = {}, {}
        for metric_key, metric in metrics.items():
            if metric.winsorize_percentile:
                stats[metric_key] = reads.winsorized_stats(conn, key, metric, counts)
            else:
                kept = sums.read(conn, key, metric_key)
                stats[metric_key] = {v: from_sums(v, counts[v], kept.get(v, sums.ZERO), metric)
                                     for v in sorted(counts)}
            if with_looks:
                series[metric_key] = looks.cumulative(metric, names, reads.sums_by_hour(conn, key, metric_key),
                                                      by_hour)
        data = Data(experiment, record, metrics, counts, reads.exposures_by_epoch(conn, key), stats,
                    series, reads.pending(conn))
    return data


def metric_entry(data: Data, metric_key: str, role: str) -> dict[str, Any]:
    """One metric: each variant's units, value and variance, and every treatment's comparison."""
    experiment, metric, by_variant = data.experiment, data.metrics[metric_key], data.stats[metric_key]
    cuped = compare.cuped(metric, by_variant)
    control = experiment.control
    comparisons = []
    for treatment in experiment.treatments:
        c = compare.compare(metric, by_variant[control], by_variant[treatment], experiment, cuped,
                            len(experiment.treatments))
        sequential = looks.sequential(metric, data.looks.get(metric_key, []), control, treatment,
                                      experiment.significance_level, experiment.minimum_sample_size)
        if sequential is not None and "error" not in c:
            c["always_valid"] = sequential
        if role == "guardrail":
            c["guardrail"] = compare.guardrail(metric, by_variant[control], c,
                                               experiment.guardrail_margins[metric_key],
                                               experiment.significance_level)
        comparisons.append(c)
    return {"metric": metric_key, "kind": metric.kind, "direction": metric.direction, "role": role,
            "variants": {v: {"units": s.n, "mean": s.value(metric), "variance": s.variance}
                         for v, s in by_variant.items()},
            "comparisons": comparisons}


def analyse(data: Data) -> dict[str, Any]:
    """The full analysis of what `read` returned (pure)."""
    experiment = data.experiment
    success = [m for m in experiment.success_metrics if m in data.metrics]
    guards = [m for m in experiment.guardrail_margins if m in data.metrics and m not in success]
    report = {m: metric_entry(data, m, "success") for m in success}
    report.update({m: metric_entry(data, m, "guardrail") for m in guards})
    for m in success:  # a success metric that is also a guardrail is checked as one too
        if m in experiment.guardrail_margins:
            for c in report[m]["comparisons"]:
                c["guardrail"] = compare.guardrail(data.metrics[m], data.stats[m][experiment.control], c,
                                                   experiment.guardrail_margins[m], experiment.significance_level)
    srm = decide.srm(experiment, data.by_epoch, data.record.epochs or [])
    decide.adjust(report, success, experiment)
    return {"experiment": experiment.key, "status": data.record.status, "control": experiment.control,
            "srm": srm, "multiple_testing": experiment.multiple_testing,
            "significance_level": experiment.significance_level, "pending": data.pending,
            "metrics": list(report.values()),
            "decision": decide.decide(report, data.metrics, success, srm, experiment, data.counts)}


def results(runtime: Runtime, key: str) -> dict[str, Any]:
    """The full analysis of an experiment (GET /experiments/{key}/results)."""
    return analyse(read(runtime, key))
