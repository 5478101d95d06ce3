"""Flag and segment tables and the queries the flag service runs."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Collection, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel


def _ts(**kwargs: Any) -> Any:
    return Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False, **kwargs))


ENVIRONMENT = sa.String(128)


class EnvironmentRecord(SQLModel, table=True):
    """An environment (development, staging, production...): its own flag targeting,
    segments, layers and experiments, and the SDK keys bound to it."""

    __tablename__ = "environments"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    name: str
    colour: str = Field(sa_column=Column(sa.String(16), nullable=False))
    requires_approval: bool = False
    position: int = 0
    version: int
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    updated_by: str


class FlagRecord(SQLModel, table=True):
    """A flag in one environment: the global definition (the same in every environment)
    and this environment's targeting, in one document, with its own version."""

    __tablename__ = "flags"
    __table_args__ = (sa.UniqueConstraint("environment", "key", name="uq_flags_environment_key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    environment: str = Field(sa_column=Column(ENVIRONMENT, nullable=False))
    key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    version: int
    enabled: bool
    tags: str = ""  # ",a,b," so a tag filter is one indexed-free LIKE on both backends
    description: str = ""
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


class FlagRevisionRecord(SQLModel, table=True):
    """One version of a flag: full document plus the diff from the previous one."""

    __tablename__ = "flag_revisions"
    __table_args__ = (sa.UniqueConstraint("environment", "flag_key", "version",
                                          name="uq_flag_revisions_version"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    environment: str = Field(sa_column=Column(ENVIRONMENT, nullable=False))
    flag_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    version: int
    action: str
    actor: str
    created_at: datetime = _ts()
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    diff: list = Field(sa_column=Column(JSON, nullable=False))


class SegmentRecord(SQLModel, table=True):
    """A reusable, named list of conditions."""

    __tablename__ = "segments"
    __table_args__ = (sa.UniqueConstraint("environment", "key", name="uq_segments_environment_key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    environment: str = Field(sa_column=Column(ENVIRONMENT, nullable=False))
    key: str = Field(sa_column=Column(sa.String(128), nullable=False))
    version: int
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    updated_by: str


def get_environment(session: Session, key: str, lock: bool = False) -> EnvironmentRecord | None:
    query = sa.select(EnvironmentRecord).where(EnvironmentRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def environments(session: Session) -> Sequence[EnvironmentRecord]:
    return session.execute(sa.select(EnvironmentRecord).order_by(
        EnvironmentRecord.position, EnvironmentRecord.key)).scalars().all()


def environment_keys(session: Session) -> list[str]:
    return [e.key for e in environments(session)]


def get_flag(session: Session, key: str, environment: str, lock: bool = False) -> FlagRecord | None:
    query = sa.select(FlagRecord).where(FlagRecord.key == key, FlagRecord.environment == environment)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def flag_rows(session: Session, key: str) -> dict[str, FlagRecord]:
    """A flag's row in every environment, by environment."""
    rows = session.execute(sa.select(FlagRecord).where(FlagRecord.key == key)).scalars()
    return {row.environment: row for row in rows}


def flags_in(session: Session, environment: str, keys: Collection[str] | None = None,
             tag: str | None = None) -> Sequence[FlagRecord]:
    query = sa.select(FlagRecord).where(FlagRecord.environment == environment)
    if keys is not None:
        query = query.where(FlagRecord.key.in_(list(keys)))
    if tag:
        query = query.where(FlagRecord.tags.like(f"%,{_escape_like(tag)},%", escape="\\"))
    return session.execute(query.order_by(FlagRecord.key)).scalars().all()


def get_segment(session: Session, key: str, environment: str) -> SegmentRecord | None:
    return session.execute(sa.select(SegmentRecord).where(
        SegmentRecord.key == key, SegmentRecord.environment == environment)).scalar_one_or_none()


def segments_in(session: Session, environment: str) -> Sequence[SegmentRecord]:
    return session.execute(sa.select(SegmentRecord).where(SegmentRecord.environment == environment)
                           .order_by(SegmentRecord.key)).scalars().all()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def query_flags(session: Session, *, environment: str, tag: str | None, search: str | None,
                offset: int, limit: int) -> tuple[Sequence[FlagRecord], int]:
    """One environment's flags ordered by key, filtered by tag and a key/description search."""
    query = sa.select(FlagRecord).where(FlagRecord.environment == environment)
    if tag:
        query = query.where(FlagRecord.tags.like(f"%,{_escape_like(tag)},%", escape="\\"))
    if search:
        pattern = f"%{_escape_like(search.lower())}%"
        query = query.where(sa.or_(sa.func.lower(FlagRecord.key).like(pattern, escape="\\"),
                                   sa.func.lower(FlagRecord.description).like(pattern, escape="\\")))
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(FlagRecord.key).offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def all_documents(session: Session, environment: str) -> tuple[list[dict], list[dict]]:
    """Every flag and segment document of one environment, by key (a snapshot's content)."""
    flags = session.execute(sa.select(FlagRecord.document).where(FlagRecord.environment == environment)
                            .order_by(FlagRecord.key)).scalars().all()
    segments = session.execute(sa.select(SegmentRecord.document).where(
        SegmentRecord.environment == environment).order_by(SegmentRecord.key)).scalars().all()
    return list(flags), list(segments)


def segment_keys(session: Session, environment: str) -> set[str]:
    return set(session.execute(sa.select(SegmentRecord.key).where(
        SegmentRecord.environment == environment)).scalars().all())


def compare_and_set(session: Session, record: Any, expected: int, values: dict[str, Any]) -> bool:
    """Write `values` to `record`'s row only if it is still at version `expected` (race-free)."""
    model = type(record)
    result = session.execute(
        sa.update(model).where(model.id == record.id, model.version == expected)
        .values(version=expected + 1, **values)
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def revisions(session: Session, key: str, environment: str, offset: int,
              limit: int) -> tuple[Sequence[FlagRevisionRecord], int]:
    query = sa.select(FlagRevisionRecord).where(FlagRevisionRecord.flag_key == key,
                                                FlagRevisionRecord.environment == environment)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(FlagRevisionRecord.version.desc())
                           .offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def revision(session: Session, key: str, environment: str, version: int) -> FlagRevisionRecord | None:
    return session.execute(sa.select(FlagRevisionRecord).where(
        FlagRevisionRecord.flag_key == key, FlagRevisionRecord.environment == environment,
        FlagRevisionRecord.version == version)).scalar_one_or_none()


def last_revision_version(session: Session, key: str, environment: str) -> int:
    """The highest revision number a key ever had in an environment (0 if none): versions
    never repeat, so a flag re-created after a delete continues its history."""
    value = session.execute(sa.select(sa.func.max(FlagRevisionRecord.version)).where(
        FlagRevisionRecord.flag_key == key, FlagRevisionRecord.environment == environment)).scalar()
    return int(value or 0)


def flag_keys_ever(session: Session, environment: str) -> set[str]:
    return set(session.execute(sa.select(FlagRevisionRecord.flag_key).where(
        FlagRevisionRecord.environment == environment).distinct()).scalars())


class HashSaltRecord(SQLModel, table=True):
    """Who hashes with which salt: flags, release rules, layers and experiments each own theirs.

    Salts are global (bucketing ignores everything else), so two objects sharing one
    would split their units along the same line; a new or changed salt that another
    object already owns is refused.
    """

    __tablename__ = "hash_salts"
    salt: str = Field(sa_column=Column(sa.String(256), primary_key=True))
    owner_type: str = Field(sa_column=Column(sa.String(32), nullable=False))
    owner_key: str = Field(sa_column=Column(sa.String(128), nullable=False))


def salt_owner(session: Session, salt: str) -> tuple[str, str] | None:
    """(owner type, owner key) of a salt in use, or None."""
    row = session.execute(sa.select(HashSaltRecord.owner_type, HashSaltRecord.owner_key)
                          .where(HashSaltRecord.salt == salt)).first()
    return (row[0], row[1]) if row else None


def claim_salts(session: Session, owner_type: str, owner_key: str, added: set[str],
                removed: set[str]) -> tuple[str, str, str] | None:
    """Record `owner` hashing with `added` and no longer with `removed`; return
    (salt, other type, other key) instead if another object owns one of `added`."""
    for salt in sorted(added):
        other = salt_owner(session, salt)
        if other is not None and other != (owner_type, owner_key):
            return salt, other[0], other[1]
    if removed:
        session.execute(sa.delete(HashSaltRecord).where(
            HashSaltRecord.salt.in_(sorted(removed)), HashSaltRecord.owner_type == owner_type,
            HashSaltRecord.owner_key == owner_key))
    for salt in sorted(added):
        if salt_owner(session, salt) is None:
            session.add(HashSaltRecord(salt=salt, owner_type=owner_type, owner_key=owner_key))
    session.flush()
    return None
