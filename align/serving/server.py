"""uvicorn around the app: in the foreground for the command, or in a thread (tests, the load benchmark)."""

from __future__ import annotations

import threading
import time

from align.errors import AlignError


def _server(app, host: str, port: int):
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve_forever(app, host: str, port: int) -> None:
    server = _server(app, host, port)
    server.run()
    if not server.started:
        raise AlignError(f"could not serve on {host}:{port} (is the port taken?)")


class Running:
    """A server started in a thread; `url`, and `stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.host, self.port = host, port
        self.server = _server(app, host, port)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="align-serve-http")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AlignError(f"the API server did not start on {host}:{port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
