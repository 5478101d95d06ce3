"""Flag and segment tables and the queries the flag service runs."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel


def _ts(**kwargs: Any) -> Any:
    return Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False, **kwargs))


class FlagRecord(SQLModel, table=True):
    """The current document of a flag, with its optimistic-locking version."""

    __tablename__ = "flags"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
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
    __table_args__ = (sa.UniqueConstraint("flag_key", "version"),)
    id: Optional[int] = Field(default=None, primary_key=True)
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
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    version: int
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    updated_by: str


def get_flag(session: Session, key: str) -> FlagRecord | None:
    return session.execute(sa.select(FlagRecord).where(FlagRecord.key == key)).scalar_one_or_none()


def get_segment(session: Session, key: str) -> SegmentRecord | None:
    return session.execute(
        sa.select(SegmentRecord).where(SegmentRecord.key == key)).scalar_one_or_none()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def query_flags(session: Session, *, tag: str | None, search: str | None,
                offset: int, limit: int) -> tuple[Sequence[FlagRecord], int]:
    """Flags ordered by key, filtered by tag and a key/description search."""
    query = sa.select(FlagRecord)
    if tag:
        query = query.where(FlagRecord.tags.like(f"%,{_escape_like(tag)},%", escape="\\"))
    if search:
        pattern = f"%{_escape_like(search.lower())}%"
        query = query.where(sa.or_(sa.func.lower(FlagRecord.key).like(pattern, escape="\\"),
                                   sa.func.lower(FlagRecord.description).like(pattern, escape="\\")))
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(FlagRecord.key).offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def all_documents(session: Session) -> tuple[list[dict], list[dict]]:
    """Every flag and segment document, ordered by key (the snapshot's content)."""
    flags = session.execute(sa.select(FlagRecord.document).order_by(FlagRecord.key)).scalars().all()
    segments = session.execute(
        sa.select(SegmentRecord.document).order_by(SegmentRecord.key)).scalars().all()
    return list(flags), list(segments)


def segment_keys(session: Session) -> set[str]:
    return set(session.execute(sa.select(SegmentRecord.key)).scalars().all())


def compare_and_set(session: Session, model: type, key: str, expected: int,
                    values: dict[str, Any]) -> bool:
    """Write `values` only if the row is still at version `expected` (race-free)."""
    result = session.execute(
        sa.update(model).where(model.key == key, model.version == expected)
        .values(version=expected + 1, **values)
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def revisions(session: Session, key: str, offset: int, limit: int) -> tuple[Sequence[FlagRevisionRecord], int]:
    query = sa.select(FlagRevisionRecord).where(FlagRevisionRecord.flag_key == key)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(FlagRevisionRecord.version.desc())
                           .offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def revision(session: Session, key: str, version: int) -> FlagRevisionRecord | None:
    return session.execute(sa.select(FlagRevisionRecord).where(
        FlagRevisionRecord.flag_key == key, FlagRevisionRecord.version == version)).scalar_one_or_none()


def last_revision_version(session: Session, key: str) -> int:
    """The highest revision number a key ever had (0 if none): versions never repeat,
    so a flag re-created after a delete continues its history."""
    value = session.execute(sa.select(sa.func.max(FlagRevisionRecord.version))
                            .where(FlagRevisionRecord.flag_key == key)).scalar()
    return int(value or 0)


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
