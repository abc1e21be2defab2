"""TLS to an https origin: a real origin with a certificate from a throw-away CA
(trustme), the real proxy in front of it, and every way its settings can go wrong."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from proxy.app import Warmproxy
from proxy.config import ConfigError, load_settings
from tests.proxy.conftest import ProxyFactory, control_url, url

CACHEABLE = {"Cache-Control": "public, max-age=60"}
SERVER_NAME = "origin.test"


@dataclass
class TLSOrigin:
    """An https origin answering every path with a cacheable body, counting requests."""

    url: str = ""
    requests: dict[str, int] = field(default_factory=dict)
    # The names clients sent in SNI (None: no SNI, as for an IP address).
    server_names: list[str | None] = field(default_factory=list)


StartOrigin = Callable[[trustme.LeafCert], Awaitable[TLSOrigin]]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(cert: trustme.LeafCert, origin: TLSOrigin) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        origin.server_names.append(name)

    context.sni_callback = record_sni
    return context


@pytest.fixture
async def start_origin() -> AsyncIterator[StartOrigin]:
    runners: list[web.ServerRunner] = []

    async def start(cert: trustme.LeafCert) -> TLSOrigin:
        origin = TLSOrigin()

        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            origin.requests[request.path_qs] = origin.requests.get(request.path_qs, 0) + 1
            if request.path == "/sitemap.xml":
                body = (
                    '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                    "<url><loc>/a</loc></url><url><loc>/b</loc></url></urlset>"
                )
                return web.Response(text=body, content_type="application/xml")
            return web.Response(text=f"secure {request.path}", headers=CACHEABLE)

        runner = web.ServerRunner(web.Server(dispatch))
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert, origin))
        await site.start()
        origin.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        return origin

    yield start
    for runner in runners:
        await runner.cleanup()


async def get(client: aiohttp.ClientSession, proxy: Warmproxy, path: str) -> tuple[int, str, str]:
    async with client.get(url(proxy, path)) as response:
        return response.status, await response.text(), response.headers.get("Cache-Status", "")


async def tls_errors(client: aiohttp.ClientSession, proxy: Warmproxy) -> float:
    """``warmproxy_origin_errors_total{reason="tls"}`` as /metrics shows it."""
    async with client.get(control_url(proxy, "/metrics")) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('warmproxy_origin_errors_total{reason="tls"}'):
            return float(line.split()[-1])
    return 0.0


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and text in r.getMessage()
    ]


async def test_a_certificate_from_the_configured_ca_is_trusted_and_answers_are_cached(
    ca: trustme.CA,
    ca_file: str,
    start_origin: StartOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin = await start_origin(ca.issue_cert("127.0.0.1"))
    proxy = await make_proxy(origin.url, proxy={"origin_ca_file": ca_file})
    status, body, _ = await get(client, proxy, "/page")
    assert (status, body) == (200, "secure /page")
    status, body, cache_status = await get(client, proxy, "/page")
    assert (status, body) == (200, "secure /page")
    assert cache_status.startswith("warmproxy; hit")
    assert origin.requests == {"/page": 1}
    assert await tls_errors(client, proxy) == 0


async def test_an_untrusted_certificate_is_a_502_logged_and_counted_as_tls(
    ca: trustme.CA,
    start_origin: StartOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    origin = await start_origin(ca.issue_cert("127.0.0.1"))
    # No origin_ca_file: the system's trust store, which never heard of this CA.
    proxy = await make_proxy(origin.url)
    status, body, cache_status = await get(client, proxy, "/page")
    assert status == 502
    assert body == "warmproxy: TLS to the origin failed\n"
    assert 'detail="origin-tls"' in cache_status
    assert origin.requests == {}
    logged = warnings(caplog, "origin TLS certificate verify failed")
    assert logged and origin.url in logged[0]
    assert await tls_errors(client, proxy) == 1


async def test_verification_off_accepts_any_certificate_and_is_warned_at_start(
    ca: trustme.CA,
    start_origin: StartOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    # A certificate for another name, from an unknown CA: anything goes.
    origin = await start_origin(ca.issue_cert("elsewhere.example"))
    proxy = await make_proxy(origin.url, proxy={"origin_verify": False})
    logged = warnings(caplog, "TLS certificate verification is OFF")
    assert len(logged) == 1 and origin.url in logged[0]
    status, body, _ = await get(client, proxy, "/page")
    assert (status, body) == (200, "secure /page")


async def test_the_server_name_is_sent_in_sni_and_checked_when_the_origin_is_an_ip(
    ca: trustme.CA,
    ca_file: str,
    start_origin: StartOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    # The certificate names the service, not the address the proxy dials.
    origin = await start_origin(ca.issue_cert(SERVER_NAME))
    by_address = await make_proxy(origin.url, proxy={"origin_ca_file": ca_file})
    status, _, _ = await get(client, by_address, "/page")
    assert status == 502
    assert warnings(caplog, "origin TLS certificate verify failed")
    assert origin.server_names == [None]  # no SNI for an IP address

    by_name = await make_proxy(
        origin.url, proxy={"origin_ca_file": ca_file, "origin_server_name": SERVER_NAME}
    )
    status, body, _ = await get(client, by_name, "/page")
    assert (status, body) == (200, "secure /page")
    assert origin.server_names[-1] == SERVER_NAME


async def test_warm_and_sitemap_fetches_use_the_same_tls_settings(
    ca: trustme.CA,
    ca_file: str,
    start_origin: StartOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    origin = await start_origin(ca.issue_cert(SERVER_NAME))
    sitemap = {"name": "sitemap", "source": {"type": "sitemap", "url": "/sitemap.xml"}}
    proxy = await make_proxy(
        origin.url,
        proxy={"origin_ca_file": ca_file, "origin_server_name": SERVER_NAME},
        strategies={"proactive": {"data_sources": [sitemap]}},
        state={"dir": str(tmp_path / "state")},
        execution={"rate_limit": 0},
    )
    async with client.post(
        control_url(proxy, "/cache/warming/start"), json={"strategy": "proactive"}
    ) as response:
        assert response.status == 202, await response.text()
        run_id = (await response.json())["run_id"]
    progress: dict[str, Any] = {}
    for _ in range(500):
        async with client.get(
            control_url(proxy, f"/cache/warming/progress?run_id={run_id}")
        ) as response:
            progress = await response.json()
        if progress["status"] != "running":
            break
        await asyncio.sleep(0.02)
    assert progress["status"] == "completed", progress
    assert progress["progress"]["success"] == 2
    for path in ("/a", "/b"):
        status, _, cache_status = await get(client, proxy, path)
        assert status == 200 and cache_status.startswith("warmproxy; hit"), cache_status
    assert origin.requests == {"/sitemap.xml": 1, "/a": 1, "/b": 1}
    assert set(origin.server_names) == {SERVER_NAME}


# ------------------------------------------------------------------ mTLS
#
# The mutual-TLS origin is the standard library's threaded server, closing
# a refused connection the way nginx or Envoy do: a TLS 1.3 client that sent
# no certificate gets the protocol's "certificate required" alert, then the
# end of the stream.  (asyncio's TLS server drops such a connection without
# the alert, and closing with the client's request unread resets it before
# the alert can be read: either way the client cannot tell a TLS refusal
# from any other hang-up.)


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"mutual {self.path}".encode()
        self.send_response(200)
        self.send_header("Cache-Control", "public, max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MutualTLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(5)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError):
            # The alert is sent; read what the client sent after it, so the
            # close is an orderly one the client reads the alert before.
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)
                while tls.recv(65536):
                    pass
            tls.close()
            return
        try:
            _Answer(tls, client_address, self)
        finally:
            tls.close()


@pytest.fixture
def mtls_origin(ca: trustme.CA) -> Iterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    server = _MutualTLSServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("warmproxy.client")
    paths = {
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
        "both": tmp_path / "client-and-key.pem",
    }
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.mark.parametrize("key_in_cert_file", [False, True])
async def test_an_mtls_origin_answers_a_proxy_with_a_client_certificate(
    mtls_origin: str,
    ca_file: str,
    client_files: dict[str, str],
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    key_in_cert_file: bool,
) -> None:
    mtls: dict[str, Any] = (
        {"origin_client_cert": client_files["both"]}
        if key_in_cert_file
        else {"origin_client_cert": client_files["cert"], "origin_client_key": client_files["key"]}
    )
    proxy = await make_proxy(mtls_origin, proxy={"origin_ca_file": ca_file, **mtls})
    status, body, _ = await get(client, proxy, "/m")
    assert (status, body) == (200, "mutual /m")
    _, _, cache_status = await get(client, proxy, "/m")
    assert cache_status.startswith("warmproxy; hit")


async def test_an_mtls_origin_refuses_a_proxy_without_one_a_502_counted_as_tls(
    mtls_origin: str,
    ca_file: str,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    proxy = await make_proxy(mtls_origin, proxy={"origin_ca_file": ca_file})
    status, _, cache_status = await get(client, proxy, "/m")
    assert status == 502
    assert 'detail="origin-tls"' in cache_status
    assert warnings(caplog, "certificate required")
    assert await tls_errors(client, proxy) == 1


# ------------------------------------------------------------ config errors

SECRET = "do-not-echo-3f9a"


def encrypted_key(cert: trustme.LeafCert) -> bytes:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    )


def settings_error(origin: str, **proxy: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"proxy": {"origin": origin, **proxy}})
    return str(caught.value)


def test_a_missing_ca_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    message = settings_error("https://origin.test", origin_ca_file=str(missing))
    assert "proxy.origin_ca_file" in message
    assert f"no such file: {missing}" in message


@pytest.mark.parametrize(
    "content",
    [
        f"password={SECRET}\n",
        f"-----BEGIN CERTIFICATE-----\n{SECRET}\n-----END CERTIFICATE-----\n",
    ],
    ids=["not-pem", "broken-pem"],
)
def test_a_ca_file_that_is_not_pem_is_refused_without_its_content(
    tmp_path: Path, content: str
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text(content)
    message = settings_error("https://origin.test", origin_ca_file=str(bad))
    assert "proxy.origin_ca_file" in message
    assert str(bad) in message
    assert SECRET not in message


def test_client_certificate_mistakes_are_refused_naming_the_setting(
    ca: trustme.CA, client_files: dict[str, str], tmp_path: Path
) -> None:
    origin = "https://origin.test"
    message = settings_error(origin, origin_client_key=client_files["key"])
    assert "origin_client_key is set without origin_client_cert" in message
    # A certificate file without its key, and no key file.
    message = settings_error(origin, origin_client_cert=client_files["cert"])
    assert "origin_client_cert" in message and "set origin_client_key" in message
    # The key file holds the certificate, not a key.
    message = settings_error(
        origin, origin_client_cert=client_files["cert"], origin_client_key=client_files["cert"]
    )
    assert "proxy.origin_client_key" in message and "no PEM private key" in message
    # A key that belongs to another certificate.
    other = tmp_path / "other.key"
    ca.issue_cert("other.client").private_key_pem.write_to_path(str(other))
    message = settings_error(
        origin, origin_client_cert=client_files["cert"], origin_client_key=str(other)
    )
    assert "origin_client_cert and its key do not load together" in message
    # An encrypted key: there is no password setting (and no terminal prompt).
    locked = tmp_path / "locked.key"
    locked.write_bytes(encrypted_key(ca.issue_cert("locked.client")))
    message = settings_error(
        origin, origin_client_cert=client_files["cert"], origin_client_key=str(locked)
    )
    assert "proxy.origin_client_key" in message and "encrypted" in message


def test_tls_settings_need_an_https_origin_and_a_valid_server_name(ca_file: str) -> None:
    message = settings_error("http://origin.test", origin_ca_file=ca_file, origin_verify=False)
    assert "origin_ca_file, origin_verify apply to an https origin only" in message
    message = settings_error("https://10.0.0.5", origin_server_name="bad name/")
    assert "proxy.origin_server_name" in message
    settings = load_settings(
        None, {"proxy": {"origin": "https://10.0.0.5", "origin_server_name": "Origin.Test."}}
    )
    assert settings.proxy.origin_server_name == SERVER_NAME
