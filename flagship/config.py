"""Settings: read from FLAGSHIP_* environment variables, validated at start."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlparse

from flagship.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One configuration setting: its name, env var, default and meaning."""

    name: str
    default: Any
    help: str
    kind: type = str

    @property
    def env(self) -> str:
        return f"FLAGSHIP_{self.name}"


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "sqlite:///flagship.db",
            "SQLAlchemy URL of the store. SQLite file in the working folder by default; "
            "`postgresql+psycopg://user@host/db` for PostgreSQL."),
    Setting("SQLITE_SYNCHRONOUS", "normal", "SQLite only: `normal` makes a commit survive a crash "
            "of flagship (WAL); `full` also a power cut or OS crash, at the cost of an fsync per "
            "commit."),
    Setting("REDIS_URL", "", "Redis for RQ jobs and sticky assignments. Unset: in-process jobs."),
    Setting("SECRET_KEY", "", "Signs UI sessions. Random per process when unset (sessions end on restart)."),
    Setting("ADMIN_KEY", "", "When set and no key exists, `serve` stores this as the first admin key."),
    Setting("PLUGINS", "", "Comma-separated import paths of extra plugin modules (besides entry points)."),
    Setting("HOST", "127.0.0.1", "Address `flagship serve` binds."),
    Setting("PORT", 8000, "Port `flagship serve` binds.", int),
    Setting("WORKERS", 2, "Server processes started by `flagship serve`.", int),
    Setting("THREADS", 8, "Threads per server process.", int),
    Setting("MAX_BODY_BYTES", 1_048_576, "Largest accepted request body; larger gets 413.", int),
    Setting("AUTH", True, "Require API keys. Turn off only for local experiments.", bool),
    Setting("MAX_EVENT_BATCH", 10_000, "Most events in one batch request; more gets 413.", int),
    Setting("MAX_EVENT_BATCH_BYTES", 16_777_216, "Largest event batch body; larger gets 413.", int),
    Setting("EVENT_MAX_PAST_DAYS", 30, "Events older than this many days are rejected.", int),
    Setting("EVENT_MAX_FUTURE_SECONDS", 300, "Events this far ahead of the server clock are rejected.", int),
    Setting("EVENT_LATE_SECONDS", 3600, "Events arriving this long after they happened count as late.", int),
    Setting("DEFAULT_ENVIRONMENT", "production",
            "The environment of calls that name none (the flat /flags endpoints, admin keys)."),
    Setting("JOBS", "auto", "Where periodic jobs (rollout evaluation, alerts, schedules, notifications) run: "
            "auto (rq when FLAGSHIP_REDIS_URL is set, else thread), rq (`flagship worker`), thread "
            "(inside `flagship serve`), off (system cron runs `flagship rollouts tick`)."),
    Setting("ROLLOUT_INTERVAL", 300, "Seconds between periodic rounds (rollout evaluation slots).", int),
    Setting("AGGREGATE_INTERVAL", 2, "Seconds between aggregation rounds in `flagship jobs` (run by `serve`; 0: off).", int),
    Setting("STREAM_LIMIT", 4, "Most open event streams per server process (each holds a thread); "
            "more get 503 with Retry-After (0: streams off).", int),
    Setting("LOG_FORMAT", "text", "`text`: warnings and errors as plain lines; `json`: one JSON "
            "object per line, with one line per request (request id, route, status, duration)."),
    Setting("METRICS_TOKEN", "", "When set, `GET /metrics` needs `Authorization: Bearer <this token>`; "
            "unset, it needs an admin API key."),
    Setting("METRICS_MAX_FLAGS", 100, "Most flag keys used as label values of the evaluation "
            "counter per server process; further flags count as `other`.", int),
)


def _coerce(setting: Setting, raw: Any) -> Any:
    if setting.kind is bool and isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{setting.env} must be true or false, got {raw!r}")
    if setting.kind is int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{setting.env} must be an integer, got {raw!r}") from None
        if value < 0:
            raise ConfigError(f"{setting.env} must not be negative, got {value}")
        return value
    return raw


def _check_database_url(url: str) -> None:
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"FLAGSHIP_DATABASE_URL must be a sqlite:// or postgresql:// URL, got {url!r}")


def _check_redis_url(url: str) -> None:
    if url and urlparse(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"FLAGSHIP_REDIS_URL must be a redis:// URL, got {url!r}")


def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the app config from defaults, the environment, then explicit overrides."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = overrides.pop(setting.name, environ.get(setting.env, setting.default))
        config[setting.name] = _coerce(setting, raw)
    _check_database_url(config["DATABASE_URL"])
    _check_redis_url(config["REDIS_URL"])
    config["SQLITE_SYNCHRONOUS"] = str(config["SQLITE_SYNCHRONOUS"]).strip().lower()
    if config["SQLITE_SYNCHRONOUS"] not in ("normal", "full"):
        raise ConfigError("FLAGSHIP_SQLITE_SYNCHRONOUS must be normal or full, got "
                          f"{config['SQLITE_SYNCHRONOUS']!r}")
    if config["LOG_FORMAT"] not in ("text", "json"):
        raise ConfigError(f"FLAGSHIP_LOG_FORMAT must be text or json, got {config['LOG_FORMAT']!r}")
    if config["JOBS"] not in ("auto", "rq", "thread", "off"):
        raise ConfigError(f"FLAGSHIP_JOBS must be auto, rq, thread or off, got {config['JOBS']!r}")
    if config["JOBS"] == "rq" and not config["REDIS_URL"]:
        raise ConfigError("FLAGSHIP_JOBS=rq needs FLAGSHIP_REDIS_URL")
    if config["ROLLOUT_INTERVAL"] < 1:
        raise ConfigError("FLAGSHIP_ROLLOUT_INTERVAL must be at least 1 second")
    if config["PORT"] > 65535:
        raise ConfigError(f"FLAGSHIP_PORT must be at most 65535, got {config['PORT']}")
    if not config["SECRET_KEY"]:
        config["SECRET_KEY"] = secrets.token_hex(32)
    config.update(overrides)  # test- or embedder-specific extras (TESTING, ...)
    return config


__all__ = ["SETTINGS", "Setting", "load_config"]
