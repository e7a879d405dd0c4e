"""API keys of the serving API, in their own table of the run's label store (`api_keys`, created if missing; the
store's schema version is not touched). A key is ``align-`` and 32 random bytes (URL-safe base64), shown once when
it is made; the store keeps only its SHA-256, which is enough for a random key of that length and lets a request
be checked by one indexed lookup."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import sqlalchemy as sa

from align.errors import AlignError

PREFIX = "align-"
metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The keys kept in `store` (a data.store.LabelStore), through its engine."""

    def __init__(self, store):
        self.engine = store.engine
        metadata.create_all(self.engine, checkfirst=True)

    def add(self, name: str) -> str:
        """A new key named `name`; returns the key itself (it cannot be read back later)."""
        name = (name or "").strip()
        if not name or len(name) > 100:
            raise AlignError("an API key needs a name of 1 to 100 characters")
        key = PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if conn.scalar(sa.select(api_keys.c.id).where(api_keys.c.name == name)) is not None:
                raise AlignError(f"an API key named {name!r} exists already (revoke it first, or pick another name)")
            conn.execute(api_keys.insert().values(name=name, key_sha256=key_digest(key), created_at=time.time()))
        return key

    def revoke(self, name: str) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(api_keys.update().where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=time.time())).rowcount
        if not done:
            raise AlignError(f"no active API key named {name!r} (see --list-keys)")

    def list(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys.c.name, api_keys.c.created_at, api_keys.c.revoked_at)
                                .order_by(api_keys.c.name)).all()
        return [{"name": r.name, "created_at": r.created_at, "revoked_at": r.revoked_at} for r in rows]

    def active(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None)))

    def check(self, key: str | None) -> str | None:
        """The name of the active key `key`, or None."""
        if not key or not key.startswith(PREFIX):
            return None
        digest = key_digest(key)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys.c.name, api_keys.c.key_sha256)
                               .where(api_keys.c.key_sha256 == digest, api_keys.c.revoked_at.is_(None))).first()
        return row.name if row is not None and hmac.compare_digest(row.key_sha256, digest) else None
