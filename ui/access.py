"""Who may use a served app, and over what: the login check with throttling, TLS, loopback-only modes.

Both apps (`ui.label`, `ui.chat`) sign people in with the label store's accounts through Gradio's
login page (and ``gradio_client``'s ``auth=(name, password)``), and both start through `launch`.

Throttling (`LoginThrottle`): failed sign-ins are counted per name and per client address. The
first `free_failures` (5) cost nothing; after that each key is locked for `base_delay_s` (2 s),
doubling with every further failure up to `max_delay_s` (15 min). While a name or an address is
locked every attempt is refused, the right password included, with HTTP 429 and the line "Too many
failed sign-ins ...: try again in N s". A successful sign-in clears its name's count only: the
address keeps its count, so someone with an account of their own cannot sign in between guesses at
other names to reset the address. A key's count is forgotten once it has seen no failure for
`forget_after_s` (15 min), so an office behind one address is not locked out by a day of typos.
Counts live in the server process (a restart clears them). Behind a reverse proxy every client has the proxy's
address, so the per-address count then covers everyone: prefer serving TLS here (`TLSFiles`).
"""

from __future__ import annotations

import contextvars
import ipaddress
import math
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from align.errors import AlignError

#: The client address of the request being handled (set by `ClientAddress` around every request).
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("align_client_address", default=None)

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether serving on `host` keeps the app on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ClientAddress:
    """ASGI middleware: puts each request's client address into `CLIENT_ADDRESS` for the login check."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        client = scope.get("client") if scope.get("type") in ("http", "websocket") else None
        token = CLIENT_ADDRESS.set(client[0] if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(token)


# ---------------------------------------------------------------------------------------- throttle
@dataclass
class _Count:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = float("-inf")


class LoginThrottle:
    """Failed sign-ins per key (a name, an address); see the module docstring for the rule."""

    def __init__(self, *, free_failures: int = 5, base_delay_s: float = 2.0, max_delay_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000,
                 forget_after_s: float = 900.0):
        self.free_failures, self.base_delay_s, self.max_delay_s = free_failures, base_delay_s, max_delay_s
        self.forget_after_s = forget_after_s
        self.clock, self.max_keys = clock, max_keys
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()

    def wait_s(self, keys: list[tuple[str, str]]) -> float:
        """Seconds until every key in `keys` may try again (0 when none is locked)."""
        now = self.clock()
        with self._lock:
            return max([self._counts[key].locked_until - now for key in keys if key in self._counts] + [0.0])

    def failed(self, keys: list[tuple[str, str]]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._counts) >= self.max_keys:  # forget keys that are not locked, so guesses cannot fill memory
                self._counts = {k: c for k, c in self._counts.items() if c.locked_until > now}
            for key in keys:
                count = self._counts.setdefault(key, _Count())
                if now - count.last_failure > self.forget_after_s and count.locked_until <= now:
                    count.failures = 0  # a quiet spell: start counting again
                count.failures += 1
                count.last_failure = now
                if count.failures >= self.free_failures:
                    delay = self.base_delay_s * 2 ** (count.failures - self.free_failures)
                    count.locked_until = now + min(self.max_delay_s, delay)

    def describe(self) -> str:
        """The rule in a sentence, for the login page (which shows a refusal only as wrong credentials)."""
        return (f"After {self.free_failures} failed sign-ins, a name and an address wait {self.base_delay_s:g} s "
                f"before the next try, doubling with each further failure (at most {self.max_delay_s / 60:g} min).")

    def succeeded(self, keys: list[tuple[str, str]]) -> None:
        """A sign-in worked: forget the name's failures (an address's count is kept; see the module docstring)."""
        with self._lock:
            for key in keys:
                if key[0] != "address":
                    self._counts.pop(key, None)


class GuardedLogin:
    """The login check Gradio calls with (name, password): `check` behind a `LoginThrottle`."""

    def __init__(self, check: Callable[[str, str], bool], throttle: LoginThrottle | None = None):
        self.check = check
        self.throttle = throttle or LoginThrottle()

    def __call__(self, name: str, password: str) -> bool:
        from fastapi import HTTPException

        keys = [("name", name.strip().casefold()), ("address", CLIENT_ADDRESS.get() or "unknown")]
        wait = self.throttle.wait_s(keys)
        if wait > 0:
            raise HTTPException(status_code=429, detail=f"Too many failed sign-ins for this name or from this "
                                                        f"address: try again in {math.ceil(wait)} s.")
        ok = self.check(name, password)
        (self.throttle.succeeded if ok else self.throttle.failed)(keys)
        return ok


# --------------------------------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class TLSFiles:
    certfile: str
    keyfile: str


def tls_files(certfile: str | None, keyfile: str | None) -> TLSFiles | None:
    """`--ssl-certfile` / `--ssl-keyfile` checked now (both or neither; a usable certificate and key),
    so a mistake is one line at start rather than a server that never comes up."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise AlignError("--ssl-certfile and --ssl-keyfile go together: give both (PEM files) or neither")
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not Path(path).is_file():
            raise AlignError(f"{option} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as error:
        raise AlignError(f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: not a usable PEM certificate and "
                         f"key ({error})") from error
    return TLSFiles(str(certfile), str(keyfile))


def add_tls_arguments(parser) -> None:
    parser.add_argument("--ssl-certfile", metavar="PEM", default=None,
                        help="serve HTTPS with this certificate (chain) file; needs --ssl-keyfile")
    parser.add_argument("--ssl-keyfile", metavar="PEM", default=None, help="the certificate's private key file")


# ------------------------------------------------------------------------------------------ launch
def launch(app, *, host: str, port: int | None, login: GuardedLogin | None, auth_message: str | None = None,
           tls: TLSFiles | None = None, block: bool = False, quiet: bool = True, **options) -> str:
    """Start a Gradio app: sign-in through `login` (None: no sign-in), HTTPS with `tls`; return its URL.

    `options` go on to ``Blocks.launch`` (css, head, ...). With TLS, Gradio's own start-up request to
    itself skips certificate verification (it carries nothing secret, and the certificate need not
    name the address the server asks itself on); clients verify as usual.
    """
    from starlette.middleware import Middleware

    if login is not None:
        auth_message = " ".join(filter(None, [auth_message, login.throttle.describe()]))
    app.launch(server_name=host, server_port=port, auth=login, auth_message=auth_message,
               prevent_thread_lock=not block, quiet=quiet, show_error=True, ssr_mode=False, footer_links=[],
               ssl_certfile=tls.certfile if tls else None, ssl_keyfile=tls.keyfile if tls else None,
               ssl_verify=tls is None, app_kwargs={"middleware": [Middleware(ClientAddress)]}, **options)
    return app.local_url
