"""Persistence of the experiments domain: tables, queries, assignment stores, aggregates."""
