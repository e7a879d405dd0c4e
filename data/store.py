"""The label store: prompts with candidate replies, annotators, holds, labels, chat feedback.

SQLAlchemy Core over SQLite by default (one file, WAL mode, foreign keys on, a busy timeout,
``synchronous=FULL`` so a committed label survives a killed process or a power cut). A database
URL (``postgresql://user:password@host:5432/db``, through psycopg 3: the ``postgres`` extra)
points a team at a server instead: the data-access methods below use only portable SQL; what
differs per database lives in `_sqlite_engine` and `_postgres_engine` alone.

    store = open_store("runs/demo/labels.sqlite")
    store.add_items(prompts, replies_per_prompt, model="runs/demo/sft")
    store.add_annotator("ada", "correct horse")   # 8 characters at least; a scrypt hash is stored
    item = store.next_item("ada")                 # held for ada for `hold_seconds`
    store.submit(item.id, "ada", [[r2], [r1, r3]])  # best first; a tier is a tie; only ada's held item
    rows = store.export_preferences()             # TRL conversational preference rows
    examples = store.export_kto()                 # TRL unpaired rows (KTO): thumbs, best and worst replies

Every submit is one transaction, idempotent on (item, annotator): a resubmit replaces that
annotator's label for the item, never adds a second one. The schema has a version number;
`MIGRATIONS` lists the functions that bring an older file up to date, applied in order when the
store is opened. How rankings become preference rows (the consensus rule) is in `data.labels`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from align.errors import AlignError, DataError
from align.data.labels import (FLAG_NAMES, RankedLabel, RankingError, agreement, consensus_pairs, consensus_unpaired,
                               validate_label)

ROLES = ("annotator", "admin")
DEFAULT_HOLD_SECONDS = 15 * 60
MIN_PASSWORD_LENGTH = 8
FEEDBACK_AUTH = ("login", "none")  # how a chat feedback row's user was identified: an account, or --no-auth

# --------------------------------------------------------------------------------------- schema
metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

items = sa.Table(
    "items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("prompt_json", sa.Text, nullable=False),  # the conversation so far: [{"role", "content"}...]
    sa.Column("prompt_key", sa.String(64), nullable=False, unique=True),  # sha256 of (source model, prompt)
    sa.Column("source_model", sa.String(500)),
    sa.Column("created_at", sa.Float, nullable=False),  # Unix seconds, as every time column here
)

replies = sa.Table(
    "replies", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("model", sa.String(500)),
    sa.UniqueConstraint("item_id", "position"),
    sa.Index("replies_by_item", "item_id"),
)

annotators = sa.Table(
    "annotators", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

holds = sa.Table(
    "holds", metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("held_until", sa.Float, nullable=False),
)

labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("ranking_json", sa.Text, nullable=False),  # tiers of reply ids, best first: [[7], [5, 6]]
    sa.Column("all_unacceptable", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("item_id", "annotator_id", name="one_label_per_annotator"),
    sa.Index("labels_by_annotator", "annotator_id"),
)

reply_flags = sa.Table(
    "reply_flags", metadata,
    sa.Column("label_id", sa.Integer, sa.ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("reply_id", sa.Integer, sa.ForeignKey("replies.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("flag", sa.String(40), primary_key=True),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("conversation_json", sa.Text, nullable=False),  # messages before the reply
    sa.Column("reply", sa.Text, nullable=False),  # the reply rated, or the one chosen in compare mode
    sa.Column("rating", sa.String(10)),  # "up" | "down" | NULL
    sa.Column("rejected", sa.Text),  # compare mode: the reply not chosen
    sa.Column("user", sa.String(100)),
    sa.Column("model", sa.String(500)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("auth", sa.String(20)),  # FEEDBACK_AUTH; NULL on rows from before schema version 3
    sa.Column("completion_id", sa.String(100)),  # the serve API's completion rated (NULL from the chat UI)
    sa.Column("choice", sa.Integer),  # which choice of that completion
    sa.Index("one_feedback_per_choice", "completion_id", "choice", unique=True),  # NULLs never collide
)

completions = sa.Table(
    "completions", metadata,  # the serve API's recent completions, kept for /v1/feedback (bounded: see serve:)
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("completion_id", sa.String(100), nullable=False, unique=True),
    sa.Column("model", sa.String(500)),
    sa.Column("conversation_json", sa.Text, nullable=False),  # messages before the replies
    sa.Column("replies_json", sa.Text, nullable=False),  # [reply of each choice]
    sa.Column("withheld_json", sa.Text, nullable=False),  # [whether the output filter withheld it]
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("owner", sa.String(100)),  # the API key's name that made it (only it may rate it); NULL: any caller
    sa.Index("completions_by_time", "created_at"),
)


def _v1_core_tables(conn: Connection) -> None:
    """Version 1: items, replies, annotators, holds, labels, reply flags."""
    for table in (items, replies, annotators, holds, labels, reply_flags):
        table.create(conn)  # with its indexes


def _v2_feedback(conn: Connection) -> None:
    """Version 2: thumbs up/down and compare-mode choices from the chat UI."""
    feedback.create(conn)


def _v3_feedback_auth(conn: Connection) -> None:
    """Version 3: each feedback row says how its user was identified (a login, or none)."""
    if "auth" not in {column["name"] for column in sa.inspect(conn).get_columns("feedback")}:
        conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN auth VARCHAR(20)"))


def _v4_kept_completions(conn: Connection) -> None:
    """Version 4: the serve API's completions kept for feedback across restarts; feedback rows name the completion
    and choice they rate (one feedback per choice)."""
    columns = {column["name"] for column in sa.inspect(conn).get_columns("feedback")}
    for name, kind in (("completion_id", "VARCHAR(100)"), ("choice", "INTEGER")):
        if name not in columns:
            conn.execute(sa.text(f"ALTER TABLE feedback ADD COLUMN {name} {kind}"))
    next(index for index in feedback.indexes if index.name == "one_feedback_per_choice").create(conn, checkfirst=True)
    completions.create(conn, checkfirst=True)


def _v5_completion_owner(conn: Connection) -> None:
    """Version 5: a kept completion names the API key that made it, so that only that key's holder rates it.
    Completions kept before this version have no owner (NULL): they stay open to any caller until they expire."""
    if "owner" not in {column["name"] for column in sa.inspect(conn).get_columns("completions")}:
        conn.execute(sa.text("ALTER TABLE completions ADD COLUMN owner VARCHAR(100)"))


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_core_tables, _v2_feedback, _v3_feedback_auth,
                                                  _v4_kept_completions, _v5_completion_owner]
SCHEMA_VERSION = len(MIGRATIONS)


# --------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Reply:
    id: int
    position: int
    text: str
    model: str | None


@dataclass(frozen=True)
class Item:
    """A prompt (the conversation so far) and its candidate replies."""

    id: int
    prompt: list[dict]
    replies: list[Reply]
    source_model: str | None = None


@dataclass(frozen=True)
class Label:
    id: int
    item_id: int
    annotator: str
    ranking: list[list[int]]
    all_unacceptable: bool
    flags: dict[int, list[str]] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


# ------------------------------------------------------------------------------------- passwords
class AssignmentError(AlignError):
    """A label for an item that was not given to its annotator, or past the item's quota."""


class FeedbackExists(AlignError):
    """Feedback on a choice of a served completion that has feedback already."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt with a random salt, as ``scrypt$n$r$p$salt_hex$hash_hex``. Refuses a password shorter
    than `MIN_PASSWORD_LENGTH`."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AlignError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = salt or secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of a password against `hash_password`'s output."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                               dklen=len(digest) // 2)
    return hmac.compare_digest(candidate.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, checked for unknown names so they cost the same scrypt run as known ones."""
    return hash_password(secrets.token_hex(16))


# ---------------------------------------------------------------------------------------- engine
POSTGRES_DRIVER = "postgresql+psycopg"  # psycopg 3: `pip install "align[postgres]"`
_WRITE_LOCK_KEY = 0x616C69676E  # the PostgreSQL advisory lock every write transaction takes ("align")


def store_url(url_or_path: str | os.PathLike) -> str:
    """A database URL as given (``postgresql://`` and ``postgres://`` use psycopg 3), or
    ``sqlite:///<absolute path>`` for a file path."""
    text = str(url_or_path)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    scheme, rest = text.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"{POSTGRES_DRIVER}://{rest}"
    return text


def _create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (0600; it holds the password hashes)
    before SQLite opens it. SQLite gives the -wal and -shm files the database file's mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_engine(url: str) -> Engine:
    """SQLite tuned for many annotators: WAL, foreign keys, busy timeout, write transactions
    that take the write lock up front (BEGIN IMMEDIATE) so two writers never deadlock."""
    database = sa.engine.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        _create_private(Path(database))
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                              pool_size=8, max_overflow=32)

    @sa.event.listens_for(engine, "connect")
    def _tune(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000", "synchronous=FULL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("align_write") else "BEGIN")

    return engine


def _postgres_engine(url: str) -> Engine:
    """PostgreSQL (psycopg 3) at READ COMMITTED, with write transactions serialized as on SQLite:
    each takes one transaction-level advisory lock first, so a write sees every write committed
    before it (the counterpart of BEGIN IMMEDIATE; label-store writes are few and short).
    A server that does not answer fails after 10 s rather than hanging."""
    connect_args = {} if "connect_timeout" in sa.engine.make_url(url).query else {"connect_timeout": 10}
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=32, connect_args=connect_args)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        if conn.get_execution_options().get("align_write"):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK_KEY})")

    return engine


def create_store_engine(url_or_path: str | os.PathLike) -> Engine:
    """The engine for a store path or URL: `_sqlite_engine`, `_postgres_engine`, or SQLAlchemy's
    defaults for another database. A bad URL or a missing driver is an AlignError."""
    url = store_url(url_or_path)
    shown = str(url_or_path)
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        if url.startswith("sqlite"):
            return _sqlite_engine(url)
        if url.startswith("postgresql"):
            return _postgres_engine(url)
        return sa.create_engine(url, pool_pre_ping=True)
    except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as error:
        hint = ' (pip install "align[postgres]")' if url.startswith("postgresql") else ""
        raise AlignError(f"label store {shown}: the database driver is not installed{hint}: {error}") from error
    except (sa.exc.ArgumentError, ValueError) as error:
        raise AlignError(f"label store {shown}: not a usable path or database URL ({error})") from error
    except OSError as error:  # the SQLite file's folder cannot be made
        raise AlignError(f"label store {shown}: cannot create its folder ({error.strerror or error})") from error


def driver_reason(error: BaseException) -> str:
    """The database driver's reason for an error, on one line (no FATAL prefixes, no hints)."""
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    reason = reason.removeprefix("connection failed: ").replace("FATAL:  ", "")
    return reason


def open_store(url_or_path: str | os.PathLike, *, annotators_per_item: int = 1,
               hold_seconds: float = DEFAULT_HOLD_SECONDS, migrate: bool = True) -> "LabelStore":
    """Open (creating and migrating as needed) the label store at a file path or database URL.
    A database that cannot be reached (host, port, password, database name) is an AlignError."""
    store = LabelStore(create_store_engine(url_or_path), annotators_per_item=annotators_per_item,
                       hold_seconds=hold_seconds)
    if migrate:
        store.migrate()
    return store


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AlignError(f"role must be one of {ROLES}, got {role!r}")
    return role


def _prompt_key(prompt: Sequence[Mapping], model: str | None) -> str:
    canonical = json.dumps([model or "", list(prompt)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_prompt(prompt, where: str, row: int) -> list[dict]:
    if not isinstance(prompt, list) or not prompt:
        raise DataError(where, row, "prompt", "must be a non-empty list of {role, content} messages")
    for message in prompt:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str) \
                or message.get("role") not in ("system", "user", "assistant"):
            raise DataError(where, row, "prompt", f"bad message {message!r}: need role system|user|assistant "
                                                  "and string content")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _unpaired_row(prompt: list[dict], reply: str, desirable: bool) -> dict:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": reply}], "label": desirable}


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


# ----------------------------------------------------------------------------------------- store
class LabelStore:
    """Data access for the labeling workflow. Thread-safe: every method uses its own connection."""

    def __init__(self, engine: Engine, *, annotators_per_item: int = 1,
                 hold_seconds: float = DEFAULT_HOLD_SECONDS):
        if annotators_per_item < 1:
            raise AlignError(f"annotators per item must be at least 1, got {annotators_per_item}")
        self.engine = engine
        # SQLite has one writer at a time; queueing this process's writers on a lock is fairer and
        # quicker than SQLite's busy-wait back-off (other processes still wait on busy_timeout).
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        self.annotators_per_item = annotators_per_item
        self.hold_seconds = hold_seconds

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"LabelStore({self.url!r})"

    # -- transactions
    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            raise AlignError(f"label store {self.url}: cannot connect: {driver_reason(error)}") from error

    @contextlib.contextmanager
    def _read(self):
        with self._connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, holding the write lock from the start (see the engines above)."""
        with self._write_lock, self._connect() as conn:
            conn.execution_options(align_write=True)
            try:
                with conn.begin():
                    yield conn
            except sa.exc.DataError as error:  # a value this database cannot hold (PostgreSQL: a NUL in text)
                raise AlignError(f"label store {self.url}: the database refused a value: "
                                 f"{driver_reason(error)}") from error

    # -- schema
    def version(self) -> int:
        """The schema version of the database (0 for an empty one)."""
        with self._read() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            return conn.scalar(sa.select(schema_version.c.version)) or 0

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Apply the migrations between the database's version and `target`; return the new version."""
        with self._write() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.scalar(sa.select(schema_version.c.version))
            if current is None:
                conn.execute(schema_version.insert().values(version=0))
                current = 0
            if current > SCHEMA_VERSION:
                raise AlignError(f"label store {self.url} has schema version {current}, newer than this align "
                                 f"({SCHEMA_VERSION}); upgrade align")
            for version in range(current, target):
                MIGRATIONS[version](conn)
                conn.execute(schema_version.update().values(version=version + 1))
            return max(current, target)

    # -- items
    def add_items(self, prompts: Sequence[Sequence[Mapping]], replies_per_prompt: Sequence[Sequence[str]], *,
                  model: str | None = None, source: str = "add_items") -> list[int]:
        """Store prompts with their candidate replies; skip a (model, prompt) already stored.

        Returns the ids of the items added. `source` names where the rows came from, for errors.
        """
        if len(prompts) != len(replies_per_prompt):
            raise AlignError(f"{len(prompts)} prompts but {len(replies_per_prompt)} reply lists")
        now, added = time.time(), []
        with self._write() as conn:
            for row, (prompt, texts) in enumerate(zip(prompts, replies_per_prompt), start=1):
                prompt = _check_prompt(prompt, source, row)
                if len(texts) < 2:
                    raise DataError(source, row, "replies", f"need at least 2 replies to rank, got {len(texts)}")
                key = _prompt_key(prompt, model)
                if conn.scalar(sa.select(items.c.id).where(items.c.prompt_key == key)) is not None:
                    continue
                item_id = conn.execute(items.insert().values(
                    prompt_json=_dumps(prompt), prompt_key=key, source_model=model, created_at=now)).inserted_primary_key[0]
                conn.execute(replies.insert(), [
                    {"item_id": item_id, "position": i, "text": str(text), "model": model}
                    for i, text in enumerate(texts)])
                added.append(item_id)
        return added

    def missing_prompts(self, prompts: Sequence[Sequence[Mapping]], *, model: str | None = None) -> list[int]:
        """Indices of the prompts not yet stored for `model` (what `candidates` still has to sample)."""
        keys = [_prompt_key(list(p), model) for p in prompts]
        with self._read() as conn:
            present = set()
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                present.update(conn.scalars(sa.select(items.c.prompt_key).where(items.c.prompt_key.in_(chunk))))
        return [i for i, key in enumerate(keys) if key not in present]

    def item(self, item_id: int) -> Item:
        with self._read() as conn:
            return self._item(conn, item_id)

    def _item(self, conn: Connection, item_id: int) -> Item:
        row = conn.execute(sa.select(items).where(items.c.id == item_id)).one_or_none()
        if row is None:
            raise AlignError(f"label store {self.url}: no item {item_id}")
        reply_rows = conn.execute(sa.select(replies).where(replies.c.item_id == item_id)
                                  .order_by(replies.c.position)).all()
        return Item(row.id, json.loads(row.prompt_json),
                    [Reply(r.id, r.position, r.text, r.model) for r in reply_rows], row.source_model)

    def count_items(self) -> int:
        with self._read() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(items))

    # -- annotators
    def add_annotator(self, name: str, password: str, role: str = "annotator") -> None:
        """Create an account; an existing name is refused (`update_annotator` changes one). Stores a
        scrypt hash; the password needs `MIN_PASSWORD_LENGTH` characters."""
        name = name.strip()
        if not name or len(name) > 100:
            raise AlignError("an annotator name needs 1 to 100 characters")
        values = {"password_hash": hash_password(password), "role": _check_role(role)}
        with self._write() as conn:
            if conn.scalar(sa.select(annotators.c.id).where(annotators.c.name == name)) is not None:
                raise AlignError(f"annotator {name!r} exists already: to change it, give --reset-password "
                                 "(a new password) and/or --set-role ROLE")
            conn.execute(annotators.insert().values(name=name, created_at=time.time(), **values))

    def update_annotator(self, name: str, *, password: str | None = None, role: str | None = None) -> None:
        """Reset an existing account's password and/or change its role (what is not given is kept)."""
        values = {}
        if password is not None:
            values["password_hash"] = hash_password(password)
        if role is not None:
            values["role"] = _check_role(role)
        if not values:
            raise AlignError(f"annotator {name!r}: nothing to change (give a new password or a role)")
        with self._write() as conn:
            conn.execute(annotators.update().where(annotators.c.id == self._annotator_id(conn, name)).values(**values))

    def check_password(self, name: str, password: str) -> bool:
        """Whether `password` is `name`'s. An unknown name runs scrypt against a dummy hash, so the
        time taken does not tell whether the name exists."""
        with self._read() as conn:
            stored = conn.scalar(sa.select(annotators.c.password_hash).where(annotators.c.name == name))
        if stored is None:
            verify_password(password, _dummy_hash())
            return False
        return verify_password(password, stored)

    def role(self, name: str) -> str | None:
        with self._read() as conn:
            return conn.scalar(sa.select(annotators.c.role).where(annotators.c.name == name))

    def annotator_names(self) -> list[str]:
        with self._read() as conn:
            return list(conn.scalars(sa.select(annotators.c.name).order_by(annotators.c.name)))

    def _annotator_id(self, conn: Connection, name: str) -> int:
        annotator_id = conn.scalar(sa.select(annotators.c.id).where(annotators.c.name == name))
        if annotator_id is None:
            raise AlignError(f"label store {self.url}: no annotator {name!r}")
        return annotator_id

    # -- assignment
    def next_item(self, annotator: str, *, now: float | None = None) -> Item | None:
        """The item `annotator` should label next, held for them for `hold_seconds`; None when done.

        The annotator's own unexpired hold comes first (a reload shows the same item). Otherwise
        the first item they have not labeled whose labels plus other annotators' live holds are
        fewer than `annotators_per_item`, preferring items already part-labeled (so consensus
        arrives early). Expired holds are dropped on the way.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            annotator_id = self._annotator_id(conn, annotator)
            conn.execute(holds.delete().where(holds.c.held_until <= now))
            labeled_by_me = sa.exists().where(labels.c.item_id == items.c.id, labels.c.annotator_id == annotator_id)
            item_id = conn.scalar(
                sa.select(holds.c.item_id).join(items, items.c.id == holds.c.item_id)
                .where(holds.c.annotator_id == annotator_id, ~labeled_by_me).order_by(holds.c.item_id).limit(1))
            if item_id is None:
                n_labels = (sa.select(sa.func.count()).select_from(labels)
                            .where(labels.c.item_id == items.c.id).scalar_subquery())
                n_holds = (sa.select(sa.func.count()).select_from(holds)
                           .where(holds.c.item_id == items.c.id).scalar_subquery())
                item_id = conn.scalar(
                    sa.select(items.c.id).where(~labeled_by_me, n_labels + n_holds < self.annotators_per_item)
                    .order_by(n_labels.desc(), items.c.id).limit(1).with_for_update(skip_locked=True))
                if item_id is None:
                    return None
            conn.execute(holds.delete().where(holds.c.item_id == item_id, holds.c.annotator_id == annotator_id))
            conn.execute(holds.insert().values(item_id=item_id, annotator_id=annotator_id,
                                               held_until=now + self.hold_seconds))
            return self._item(conn, item_id)

    def release_holds(self, annotator: str | None = None, *, expired_only: bool = False,
                      now: float | None = None) -> int:
        """Drop holds (all, one annotator's, or only expired ones); return how many were dropped."""
        now = time.time() if now is None else now
        query = holds.delete()
        with self._write() as conn:
            if annotator is not None:
                query = query.where(holds.c.annotator_id == self._annotator_id(conn, annotator))
            if expired_only:
                query = query.where(holds.c.held_until <= now)
            return conn.execute(query).rowcount

    def active_holds(self, *, now: float | None = None) -> list[tuple[int, str, float]]:
        """(item id, annotator, held until) for holds that have not expired."""
        now = time.time() if now is None else now
        with self._read() as conn:
            rows = conn.execute(sa.select(holds.c.item_id, annotators.c.name, holds.c.held_until)
                                .join(annotators, annotators.c.id == holds.c.annotator_id)
                                .where(holds.c.held_until > now).order_by(holds.c.item_id)).all()
        return [tuple(r) for r in rows]

    # -- labels
    def submit(self, item_id: int, annotator: str, ranking: Sequence[Sequence[int]], *,
               all_unacceptable: bool = False, flags: Mapping[int, Sequence[str]] | None = None,
               now: float | None = None, assigned_only: bool = True) -> int:
        """Record `annotator`'s ranking of an item in one transaction; return the label id.

        `ranking` is tiers of reply ids, best first (a tier of several is a tie); it may be empty
        when `all_unacceptable`. `flags` maps reply id → names from `FLAG_NAMES`. A second submit
        for the same (item, annotator) replaces the first. The annotator's hold is released.
        Only the annotator who holds the item (`next_item` gave it to them) or labeled it before
        may submit, and a new label must fit the item's `annotators_per_item` quota: both checked
        in the same transaction, else `AssignmentError`. `assigned_only=False` skips those checks
        (importing labels collected elsewhere; the apps never pass it).
        Raises `RankingError` (a ValueError) for a ranking that does not fit the item.
        """
        now = time.time() if now is None else now
        for attempt in range(2):
            try:
                return self._submit_once(item_id, annotator, ranking, bool(all_unacceptable), flags, now,
                                         assigned_only)
            except sa.exc.IntegrityError:
                if attempt:  # two submits of the same label raced on a server database: retry as update
                    raise
        raise AssertionError("unreachable")

    def _submit_once(self, item_id, annotator, ranking, all_unacceptable, flags, now, assigned_only) -> int:
        with self._write() as conn:
            annotator_id = self._annotator_id(conn, annotator)
            reply_ids = list(conn.scalars(sa.select(replies.c.id).where(replies.c.item_id == item_id)))
            if not reply_ids:
                raise RankingError(f"no item {item_id} in the label store")
            tiers, clean_flags = validate_label(ranking, reply_ids, all_unacceptable=all_unacceptable, flags=flags)
            values = {"ranking_json": _dumps(tiers), "all_unacceptable": all_unacceptable, "updated_at": now}
            label_id = conn.scalar(sa.select(labels.c.id).where(labels.c.item_id == item_id,
                                                               labels.c.annotator_id == annotator_id))
            if label_id is None and assigned_only:
                self._check_assignment(conn, item_id, annotator_id, annotator)
            if label_id is None:
                label_id = conn.execute(labels.insert().values(
                    item_id=item_id, annotator_id=annotator_id, created_at=now, **values)).inserted_primary_key[0]
            else:
                conn.execute(labels.update().where(labels.c.id == label_id).values(**values))
                conn.execute(reply_flags.delete().where(reply_flags.c.label_id == label_id))
            flag_rows = [{"label_id": label_id, "reply_id": reply, "flag": name}
                         for reply, names in clean_flags.items() for name in names]
            if flag_rows:
                conn.execute(reply_flags.insert(), flag_rows)
            conn.execute(holds.delete().where(holds.c.item_id == item_id, holds.c.annotator_id == annotator_id))
            return label_id

    def _check_assignment(self, conn: Connection, item_id: int, annotator_id: int, annotator: str) -> None:
        """A first label on an item needs the annotator's hold on it and a free place in its quota."""
        held = conn.scalar(sa.select(sa.func.count()).select_from(holds).where(
            holds.c.item_id == item_id, holds.c.annotator_id == annotator_id))
        if not held:
            raise AssignmentError(f"item {item_id} is not held by {annotator!r} (it was never given to them, or "
                                  "their hold expired): label the item the app shows next")
        n_labels = conn.scalar(sa.select(sa.func.count()).select_from(labels).where(labels.c.item_id == item_id))
        if n_labels >= self.annotators_per_item:
            raise AssignmentError(f"item {item_id} has all the {self.annotators_per_item} label(s) it needs "
                                  "already: label the item the app shows next")

    def labels(self, item_id: int | None = None) -> list[Label]:
        """Stored labels (of one item, or all), oldest first, with their flags."""
        query = (sa.select(labels, annotators.c.name).join(annotators, annotators.c.id == labels.c.annotator_id)
                 .order_by(labels.c.id))
        if item_id is not None:
            query = query.where(labels.c.item_id == item_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
            flag_rows = conn.execute(sa.select(reply_flags).order_by(reply_flags.c.reply_id, reply_flags.c.flag)).all()
        flags_by_label: dict[int, dict[int, list[str]]] = {}
        for f in flag_rows:
            flags_by_label.setdefault(f.label_id, {}).setdefault(f.reply_id, []).append(f.flag)
        return [Label(r.id, r.item_id, r.name, json.loads(r.ranking_json), bool(r.all_unacceptable),
                      flags_by_label.get(r.id, {}), r.created_at, r.updated_at) for r in rows]

    def _ranked_labels_by_item(self) -> dict[int, list[RankedLabel]]:
        grouped: dict[int, list[RankedLabel]] = {}
        for label in self.labels():
            grouped.setdefault(label.item_id, []).append(
                RankedLabel(label.annotator, label.ranking, label.all_unacceptable, label.flags))
        return grouped

    def _labeled_items(self) -> list[tuple[Item, dict[int, str], list[RankedLabel]]]:
        """Every labeled item, by id: the item, its reply texts by id, and its annotators' labels."""
        by_item = self._ranked_labels_by_item()
        with self._read() as conn:
            labeled = [self._item(conn, item_id) for item_id in sorted(by_item)]
        return [(item, {reply.id: reply.text for reply in item.replies}, by_item[item.id]) for item in labeled]

    # -- export
    def export_preferences(self, *, include_feedback: bool = True) -> list[dict]:
        """Preference pairs as TRL conversational rows: {"prompt", "chosen", "rejected"}.

        First the labeling app's consensus pairs. The consensus rule is `data.labels.consensus_pairs`:
        a pair is kept when more than half of the item's annotators prefer the same reply; ties and
        all-unacceptable give no pairs. Then (unless `include_feedback` is False) the chat app's
        compare-mode choices, `feedback_preferences()`, so `labels:<store>` trains on both.
        """
        rows = [{"prompt": item.prompt, "chosen": [{"role": "assistant", "content": text[chosen]}],
                 "rejected": [{"role": "assistant", "content": text[rejected]}]}
                for item, text, ranked in self._labeled_items()
                for chosen, rejected in consensus_pairs(ranked, list(text))]
        if include_feedback:
            rows += self.feedback_preferences()
        return rows

    def export_kto(self, *, include_feedback: bool = True) -> list[dict]:
        """Unpaired examples as TRL conversational rows: {"prompt", "completion", "label"} (label True: desirable).

        First the labeling app's rankings by `data.labels.consensus_unpaired`: the replies most of an item's
        annotators rank first are desirable, those they rank last (or mark all unacceptable) undesirable. Then
        (unless `include_feedback` is False) the chat feedback, oldest first: a thumbs up is desirable, a thumbs
        down undesirable (the chat app and the serve API's /v1/feedback store the same rows), and a compare-mode
        choice gives its chosen reply as desirable and the other as undesirable."""
        rows = [_unpaired_row(item.prompt, text[reply], desirable)
                for item, text, ranked in self._labeled_items()
                for reply, desirable in consensus_unpaired(ranked, list(text))]
        if include_feedback:
            for f in self.feedback():
                if f["rejected"] is not None:
                    rows += [_unpaired_row(f["conversation"], f["reply"], True),
                             _unpaired_row(f["conversation"], f["rejected"], False)]
                elif f["rating"] in ("up", "down"):
                    rows.append(_unpaired_row(f["conversation"], f["reply"], f["rating"] == "up"))
        return rows

    def write_preferences_jsonl(self, path: str | os.PathLike, kind: str = "pairs") -> int:
        """Write `export_preferences()` (kind "pairs": what rm/dpo train on) or `export_kto()` ("unpaired": what
        kto trains on) as JSON Lines, whole or not at all (a temporary file renamed into place); return the
        number of rows."""
        exports = {"pairs": self.export_preferences, "unpaired": self.export_kto}
        if kind not in exports:
            raise ValueError(f"export kind {kind!r}: one of {', '.join(exports)}")
        rows = exports[kind]()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(_dumps(row) + "\n")
        partial.replace(path)
        return len(rows)

    # -- admin figures
    def progress(self) -> dict:
        """Overall and per-annotator counts for the admin view."""
        need = self.annotators_per_item
        with self._read() as conn:
            n_items = conn.scalar(sa.select(sa.func.count()).select_from(items))
            per_item = (sa.select(labels.c.item_id, sa.func.count().label("n")).group_by(labels.c.item_id)
                        .subquery())
            started = conn.scalar(sa.select(sa.func.count()).select_from(per_item))
            complete = conn.scalar(sa.select(sa.func.count()).select_from(per_item).where(per_item.c.n >= need))
            n_labels = conn.scalar(sa.select(sa.func.count()).select_from(labels))
            people = conn.execute(
                sa.select(annotators.c.name, annotators.c.role, sa.func.count(labels.c.id).label("labels"),
                          sa.func.coalesce(sa.func.sum(sa.case((labels.c.all_unacceptable, 1), else_=0)), 0)
                          .label("all_unacceptable"),
                          sa.func.max(labels.c.updated_at).label("last"))
                .select_from(annotators.outerjoin(labels, labels.c.annotator_id == annotators.c.id))
                .group_by(annotators.c.id, annotators.c.name, annotators.c.role).order_by(annotators.c.name)).all()
        return {
            "items": n_items, "items_started": started, "items_complete": complete,
            "annotators_per_item": need, "labels": n_labels,
            "labels_needed": n_items * need,
            "per_annotator": [{"annotator": p.name, "role": p.role, "labels": p.labels,
                               "all_unacceptable": int(p.all_unacceptable), "last_label_at": p.last}
                              for p in people],
        }

    def agreement(self) -> dict:
        """Inter-annotator agreement on items labeled by several (see `data.labels.agreement`)."""
        return agreement(self._ranked_labels_by_item())

    def flagged_replies(self) -> list[dict]:
        """Replies some annotator flagged: item, reply id and text, flag, how many and who."""
        query = (sa.select(replies.c.item_id, replies.c.id, replies.c.text, reply_flags.c.flag, annotators.c.name)
                 .select_from(reply_flags.join(replies, replies.c.id == reply_flags.c.reply_id)
                              .join(labels, labels.c.id == reply_flags.c.label_id)
                              .join(annotators, annotators.c.id == labels.c.annotator_id))
                 .order_by(replies.c.item_id, replies.c.id, reply_flags.c.flag, annotators.c.name))
        grouped: dict[tuple[int, str], dict] = {}
        with self._read() as conn:
            for row in conn.execute(query):
                entry = grouped.setdefault((row.id, row.flag), {
                    "item_id": row.item_id, "reply_id": row.id, "reply": row.text, "flag": row.flag,
                    "count": 0, "annotators": []})
                entry["count"] += 1
                entry["annotators"].append(row.name)
        return list(grouped.values())

    # -- chat feedback
    def add_feedback(self, conversation: Sequence[Mapping], reply: str, *, rating: str | None = None,
                     rejected: str | None = None, user: str | None = None, model: str | None = None,
                     auth: str | None = None, completion_id: str | None = None, choice: int | None = None) -> int:
        """Record chat feedback: a thumbs ``rating`` ("up"/"down") on `reply`, or a compare-mode
        choice (`reply` chosen over `rejected`). `conversation` is the messages before the reply.
        `auth` says how `user` was identified: "login" (an account of this store) or "none".
        `completion_id` and `choice` name the serve API's completion rated: a second feedback on the same
        choice raises FeedbackExists."""
        if rating not in (None, "up", "down"):
            raise AlignError(f"rating must be 'up', 'down' or None, got {rating!r}")
        if auth not in (None, *FEEDBACK_AUTH):
            raise AlignError(f"auth must be one of {FEEDBACK_AUTH} or None, got {auth!r}")
        if rating is None and rejected is None:
            raise AlignError("feedback needs a rating or a rejected reply")
        conversation = _check_prompt(list(conversation), "feedback", 1)
        try:
            with self._write() as conn:
                return conn.execute(feedback.insert().values(
                    conversation_json=_dumps(conversation), reply=reply, rating=rating, rejected=rejected,
                    user=user, model=model, auth=auth, completion_id=completion_id, choice=choice,
                    created_at=time.time())).inserted_primary_key[0]
        except sa.exc.IntegrityError as error:
            if completion_id is None:
                raise
            raise FeedbackExists(f"feedback on choice {choice} of {completion_id} is recorded already") from error

    def feedback(self) -> list[dict]:
        """All chat feedback rows, oldest first."""
        with self._read() as conn:
            rows = conn.execute(sa.select(feedback).order_by(feedback.c.id)).all()
        return [{"id": r.id, "conversation": json.loads(r.conversation_json), "reply": r.reply,
                 "rating": r.rating, "rejected": r.rejected, "user": r.user, "model": r.model,
                 "auth": r.auth, "created_at": r.created_at} for r in rows]

    # -- served completions kept for feedback
    def keep_completion(self, completion_id: str, conversation: Sequence[Mapping], replies: Sequence[str],
                        withheld: Sequence[bool], *, model: str | None = None, owner: str | None = None,
                        keep_max: int = 10_000, keep_seconds: float = 7 * 86400.0, now: float | None = None) -> None:
        """Keep a served completion for later feedback (`owner`: the API key's name that made it, None when the
        server takes no keys), then drop those older than `keep_seconds` and all but the newest `keep_max` (one
        transaction)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(completions.insert().values(
                completion_id=completion_id, model=model, conversation_json=_dumps(list(conversation)),
                replies_json=_dumps(list(replies)), withheld_json=_dumps([bool(w) for w in withheld]),
                created_at=now, owner=owner))
            conn.execute(completions.delete().where(completions.c.created_at < now - keep_seconds))
            newest = conn.scalar(sa.select(sa.func.max(completions.c.seq)))
            conn.execute(completions.delete().where(completions.c.seq <= newest - keep_max))

    def completion(self, completion_id: str, *, since: float | None = None) -> dict | None:
        """A kept completion (made at `since` or later), or None."""
        query = sa.select(completions).where(completions.c.completion_id == completion_id)
        if since is not None:
            query = query.where(completions.c.created_at >= since)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {"completion_id": row.completion_id, "model": row.model,
                "conversation": json.loads(row.conversation_json), "replies": json.loads(row.replies_json),
                "withheld": json.loads(row.withheld_json), "created_at": row.created_at, "owner": row.owner}

    def count_completions(self) -> int:
        with self._read() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(completions))

    def feedback_preferences(self) -> list[dict]:
        """Compare-mode choices from the chat UI as TRL preference rows (thumbs give no pairs)."""
        return [{"prompt": f["conversation"], "chosen": [{"role": "assistant", "content": f["reply"]}],
                 "rejected": [{"role": "assistant", "content": f["rejected"]}]}
                for f in self.feedback() if f["rejected"] is not None]


__all__ = ["open_store", "LabelStore", "Item", "Reply", "Label", "MIGRATIONS", "SCHEMA_VERSION", "FLAG_NAMES",
           "RankingError", "AssignmentError", "FeedbackExists", "hash_password", "verify_password", "store_url", "create_store_engine", "DEFAULT_HOLD_SECONDS"]
