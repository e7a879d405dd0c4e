"""`ui.access`, shared by both apps: sign-in throttling per name and per client address (a fake clock, then the
real labeling server answering real HTTP from 127.0.0.1 and 127.0.0.2), loopback hosts, and HTTPS with a
self-signed certificate made here by openssl, checked by clients that verify against it."""

from __future__ import annotations

import ssl
import subprocess
import time

import pytest

from align.errors import AlignError
from tests.helpers import run_cli
from tests.ui.chat_support import running_chat
from tests.ui.label_support import make_store, password_of, running_app
from align.ui.access import GuardedLogin, LoginThrottle, is_loopback, tls_files

pytestmark = pytest.mark.timeout(300)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_throttle_locks_a_key_after_five_failures_with_a_growing_back_off():
    clock = Clock()
    throttle = LoginThrottle(free_failures=5, base_delay_s=2, max_delay_s=10, clock=clock)
    ada, other = [("name", "ada")], [("name", "bob")]
    for _ in range(4):
        throttle.failed(ada)
    assert throttle.wait_s(ada) == 0  # four failures are free
    waits = []
    for _ in range(4):
        throttle.failed(ada)
        waits.append(throttle.wait_s(ada))
        clock.now += waits[-1]  # the next try comes when the lock lapses
    assert waits == [2, 4, 8, 10]  # doubling, capped
    assert throttle.wait_s(other) == 0  # keys are separate
    throttle.failed(ada)
    throttle.succeeded(ada)
    assert throttle.wait_s(ada) == 0


def test_a_success_clears_the_name_but_not_the_address_and_a_quiet_spell_forgets_both():
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, base_delay_s=2, max_delay_s=60, forget_after_s=100, clock=clock)
    insider = [("name", "mallory"), ("address", "10.0.0.9")]
    for victim in ("ada", "bob"):  # guesses at other names from one address
        throttle.failed([("name", victim), ("address", "10.0.0.9")])
    throttle.succeeded(insider)  # signing in with an own account in between ...
    throttle.failed([("name", "cy"), ("address", "10.0.0.9")])
    assert throttle.wait_s([("address", "10.0.0.9")]) == 2  # ... does not reset the address: third failure locks
    assert throttle.wait_s([("name", "mallory")]) == 0
    clock.now += 101  # no failure for longer than forget_after_s
    throttle.failed([("name", "dan"), ("address", "10.0.0.9")])
    assert throttle.wait_s([("address", "10.0.0.9")]) == 0  # counting started again at one


def test_loopback_hosts():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"))


def login(url, name, password, address="127.0.0.1"):
    """POST /login from a given loopback address, as the login page does."""
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(local_address=address)) as client:
        return client.post(f"{url}/login", data={"username": name, "password": password})


def test_sign_in_is_throttled_per_name_and_per_address_with_a_clear_line(tmp_path):
    store = make_store(tmp_path / "labels.sqlite", annotators=("ada", "bob", "cy"))
    guard = GuardedLogin(store.check_password, LoginThrottle(free_failures=5, base_delay_s=1.5))
    with running_app(store, login=guard) as url:
        import httpx

        page_config = httpx.get(f"{url}/config").json()["detail"]  # what the login page shows
        assert "After 5 failed sign-ins, a name and an address wait 1.5 s" in page_config["auth_message"]
        assert [login(url, "ada", f"guess {n}").status_code for n in range(5)] == [400] * 5
        locked = login(url, "ada", password_of("ada"))  # the right password, but too late
        assert locked.status_code == 429
        assert "Too many failed sign-ins for this name or from this address: try again in" in locked.json()["detail"]
        assert login(url, "bob", password_of("bob")).status_code == 429  # this address is locked too
        assert login(url, "ada", password_of("ada"), address="127.0.0.2").status_code == 429  # and so is the name
        assert login(url, "cy", password_of("cy"), address="127.0.0.2").status_code == 200  # neither: fine
        time.sleep(1.6)  # the back-off lapses
        assert login(url, "ada", password_of("ada")).status_code == 200
        assert login(url, "bob", password_of("bob")).status_code == 200  # the lock on the address lapsed too
        assert login(url, "bob", "one more guess").status_code == 400
        assert login(url, "cy", password_of("cy")).status_code == 429  # ada's success did not clear the address


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key (PEM), made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=align-test",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def verifying(cert) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate."""
    return ssl.create_default_context(cafile=str(cert))


def test_the_labeling_app_serves_https_that_verifies_against_its_certificate(tmp_path, certificate):
    import httpx
    from gradio_client import Client

    cert, key = certificate
    store = make_store(tmp_path / "labels.sqlite", items=[("one", ["a", "b"])])
    with running_app(store, tls=tls_files(str(cert), str(key))) as url:
        assert url.startswith("https://127.0.0.1:")
        ada = Client(url, auth=("ada", password_of("ada")), verbose=False, ssl_verify=verifying(cert))
        item = ada.predict(api_name="/next_item")
        ada.predict(item["item_id"], [[r["id"]] for r in item["replies"]], False, {}, api_name="/submit")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url)  # the system's trust store does not know the certificate: verification is real
    assert [label.annotator for label in store.labels()] == ["ada"]


def test_the_chat_app_serves_https_too(tmp_path, certificate, tiny_model_dir):
    from gradio_client import Client

    cert, key = certificate
    store = make_store(tmp_path / "labels.sqlite")
    with running_chat(str(tiny_model_dir), store, tls=tls_files(str(cert), str(key))) as url:
        assert url.startswith("https://")
        client = Client(url, auth=("bob", password_of("bob")), verbose=False, ssl_verify=verifying(cert))
        final = client.predict("hi", "", 1.0, 0.9, 8, "", api_name="/send")
        assert final[3].startswith("Done.")
        assert client.predict(api_name="/thumbs_up").startswith("Saved")
    assert [(row["user"], row["auth"]) for row in store.feedback()] == [("bob", "login")]


def test_tls_options_are_checked_before_serving(tmp_path, certificate, capsys):
    cert, key = certificate
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [((str(cert), None), "go together"), ((str(tmp_path / "missing.pem"), str(key)), "no such file"),
             ((str(tmp_path / "junk.pem"), str(key)), "not a usable PEM certificate and key")]
    for (certfile, keyfile), message in cases:
        with pytest.raises(AlignError, match=message):
            tls_files(certfile, keyfile)
    assert tls_files(None, None) is None
    store = tmp_path / "labels.sqlite"
    make_store(store).close()
    assert run_cli("label", "--store", store, "--ssl-keyfile", key) == 2
    assert run_cli("chat", "--no-auth", "--ssl-certfile", tmp_path / "junk.pem", "--ssl-keyfile", key) == 2
    err = capsys.readouterr().err
    assert "--ssl-certfile and --ssl-keyfile go together" in err and "not a usable PEM" in err
    assert "Traceback" not in err
