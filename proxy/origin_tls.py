"""TLS to an https origin: the client-side SSL context and how its failures read.

Kept apart from the settings and the connection pool so both use the same
checks: the configuration refuses a file the pool could not load, at start,
with a message naming the setting (never the file's content).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path

#: Longest path accepted for a certificate or key file.
MAX_PATH_LENGTH = 4096
#: Largest certificate or key file read (a CA bundle of a few hundred
#: certificates is well below it).
MAX_PEM_BYTES = 4 * 1024 * 1024

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
# PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY").
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
_PEM_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")
# A DNS name (RFC 1123 labels); IP addresses are checked apart.
_HOST_NAME = re.compile(r"(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
# What OpenSSL's message says, without the "[SSL: CODE]" prefix and the
# "(_ssl.c:1006)" suffix.
_SSL_MESSAGE = re.compile(r"^\[[^\]]*\]\s*(?P<text>.*?)\s*\(_ssl\.c:\d+\)$")


class TLSFileError(ValueError):
    """A certificate or key file that cannot be used; the message says what is
    wrong (the caller names the setting), never the file's content."""


def read_pem(path: str) -> bytes:
    """The bytes of ``path``; refused when missing, unreadable, too large or not PEM."""
    if len(path) > MAX_PATH_LENGTH or "\0" in path:
        raise TLSFileError("not a usable file path")
    file = Path(path)
    try:
        if not file.exists():
            raise TLSFileError(f"no such file: {path}")
        if not file.is_file():
            raise TLSFileError(f"{path} is not a file")
        if file.stat().st_size > MAX_PEM_BYTES:
            raise TLSFileError(f"{path} is larger than {MAX_PEM_BYTES} bytes")
        data = file.read_bytes()
    except OSError as exc:
        raise TLSFileError(f"cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TLSFileError(f"{path} is not a PEM file (no -----BEGIN line)")
    return data


def check_ca_file(path: str) -> None:
    """Refuse a CA bundle that holds no certificate OpenSSL can load."""
    if _PEM_CERTIFICATE not in read_pem(path):
        raise TLSFileError(f"{path} holds no PEM certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSFileError(f"{path} does not load as PEM certificates ({_reason(exc)})") from None


def check_certificate_file(path: str) -> None:
    """Refuse a client certificate file without a PEM certificate."""
    if _PEM_CERTIFICATE not in read_pem(path):
        raise TLSFileError(f"{path} holds no PEM certificate")


def check_key_file(path: str) -> None:
    """Refuse a file without an unencrypted PEM private key."""
    data = read_pem(path)
    if _PEM_ENCRYPTED_KEY.search(data):
        # There is no password setting: OpenSSL would ask on the terminal.
        raise TLSFileError(f"{path} holds an encrypted private key (not supported)")
    if not _PEM_PRIVATE_KEY.search(data):
        raise TLSFileError(f"{path} holds no PEM private key")


def check_key_pair(cert: str, key: str) -> None:
    """Refuse a certificate and key (``key`` empty: in the certificate's
    file) that OpenSSL cannot load together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key or None, password=_no_password)
    except ssl.SSLError as exc:
        raise TLSFileError(_reason(exc)) from None
    except OSError as exc:
        raise TLSFileError(f"cannot read {key or cert}: {exc.strerror}") from None


def check_server_name(value: str) -> str:
    """A host name or IP address to check the origin's certificate against."""
    name = value.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(
            f"must be a DNS name such as origin.internal or an IP address, got {value[:64]!r}"
        )
    return name


def client_context(
    *, verify: bool, ca_file: str = "", client_cert: str = "", client_key: str = ""
) -> ssl.SSLContext:
    """The SSL context every connection to the origin uses.

    With ``ca_file`` only its certificates are trusted (not the system's);
    without it, the system's trust store.  ``verify`` False accepts any
    certificate for any name: the caller warns about it.
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None, password=_no_password)
    return context


def tls_failure(exc: BaseException) -> str | None:
    """A log line naming the TLS failure behind ``exc``, None if it is none.

    aiohttp wraps the ssl module's error (ClientConnectorCertificateError
    from SSLCertVerificationError at the handshake; ClientOSError from
    SSLError when the origin's alert comes after it, as TLS 1.3 origins
    refusing a client certificate send theirs).  Its wrappers are ssl errors
    too, with their own message: the innermost one in the chain tells.
    """
    found: ssl.SSLError | None = None
    cause: BaseException | None = exc
    for _ in range(6):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError):
            found = cause
        cause = cause.__cause__ or cause.__context__
    if found is None:
        return None
    if isinstance(found, ssl.SSLCertVerificationError):
        reason = getattr(found, "verify_message", None) or _reason(found)
        return f"origin TLS certificate verify failed: {reason}"
    return f"origin TLS handshake failed: {_reason(found)}"


def _reason(exc: ssl.SSLError) -> str:
    text = exc.strerror or str(exc)
    match = _SSL_MESSAGE.match(text)
    if match and match["text"]:
        return match["text"][:300]
    return (exc.reason or text or type(exc).__name__)[:300]


def _no_password() -> bytes:
    # An empty password makes an encrypted key fail to load instead of
    # OpenSSL asking for one on the terminal.
    return b""
