"""Shared pieces of the labeling-app tests: a seeded store, a live app on 127.0.0.1, chromium."""

from __future__ import annotations

import contextlib

from align.data.store import open_store
from tests.helpers import free_port  # noqa: F401 — imported from here by the ui and serving tests
from align.ui.label import build_app, launch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def password_of(name: str) -> str:
    """The password `make_store` gives an account."""
    return f"password-of-{name}"


def make_store(path, *, annotators=("ada", "bob"), admins=("boss",), items=(), annotators_per_item=1,
               hold_seconds=600):
    """A store with accounts (password `password_of(name)`) and items given as (prompt text, [replies])."""
    store = open_store(path, annotators_per_item=annotators_per_item, hold_seconds=hold_seconds)
    for name in annotators:
        store.add_annotator(name, password_of(name))
    for name in admins:
        store.add_annotator(name, password_of(name), role="admin")
    if items:
        store.add_items([[{"role": "user", "content": text}] for text, _ in items], [r for _, r in items],
                        model="test")
    return store


@contextlib.contextmanager
def running_app(store, *, tls=None, login=None, **build_options):
    """The real labeling app served on a free loopback port (HTTPS with `tls`); yields its URL."""
    app = build_app(store, **build_options)
    url = launch(app, store, host="127.0.0.1", port=free_port(), tls=tls, login=login)
    try:
        yield url.rstrip("/")
    finally:
        app.close()


@contextlib.contextmanager
def chromium():
    """Debian's chromium, headless, through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser, url, name, password=None):
    """A fresh browser context logged in as `name`; returns the page showing the app."""
    page = browser.new_context(viewport={"width": 1200, "height": 1400}).new_page()
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password or password_of(name))
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#header p", timeout=30_000)
    return page
