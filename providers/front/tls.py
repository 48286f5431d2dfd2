"""TLS at a service's front end: Azure ML v1's `ssl_enabled`, `ssl_cert_pem_file`, `ssl_key_pem_file`, `ssl_cname`.

The front end (nginx, the gateway's own renderer) terminates TLS; the scoring
server behind it still listens on 127.0.0.1 only. Pure: reading the two PEM files
is the component's, at program time; what is checked and rendered lives here, so
the Kubernetes and ACI targets say and do the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
PROTOCOLS = "TLSv1.2 TLSv1.3"
CNAME_RE = r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class TlsError(ValueError):
    """A bad TLS argument: the message starts with the field's name."""


def check_args(ssl_enabled: bool, cert_file: Any, key_file: Any, cname: Any) -> list[tuple[str, str]]:
    """Azure ML's rules: a certificate and its key with `ssl_enabled`, none of the three without it."""
    failures: list[tuple[str, str]] = []
    if ssl_enabled:
        for field, value in (("ssl_cert_pem_file", cert_file), ("ssl_key_pem_file", key_file)):
            if not value:
                failures.append((field, "is required when ssl_enabled is true (the path of a PEM file)"))
    else:
        for field, value in (("ssl_cert_pem_file", cert_file), ("ssl_key_pem_file", key_file), ("ssl_cname", cname)):
            if value:
                failures.append((field, "is only used with ssl_enabled=True; set ssl_enabled or remove it"))
    if cname is not None and not (isinstance(cname, str) and re.match(CNAME_RE, cname)):
        failures.append(("ssl_cname", f"must be a DNS name such as scoring.example.com, got {cname!r}"))
    return failures


def read_pair(cert_file: str | Path, key_file: str | Path) -> tuple[str, str]:
    """The certificate chain and its private key as PEM text, checked to belong together.

    Raises TlsError naming the field; the key's text never appears in a message.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    texts = {}
    for field, path in (("ssl_cert_pem_file", cert_file), ("ssl_key_pem_file", key_file)):
        try:
            texts[field] = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise TlsError(f"{field}: cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    cert_pem, key_pem = texts["ssl_cert_pem_file"], texts["ssl_key_pem_file"]
    try:
        certs = x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError:
        raise TlsError(f"ssl_cert_pem_file: {str(cert_file)!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise TlsError(f"ssl_key_pem_file: {str(key_file)!r} holds no unencrypted PEM private key") from None
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certs[0].public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise TlsError(f"ssl_key_pem_file: {str(key_file)!r} is not the key of the first certificate in {str(cert_file)!r}")
    return cert_pem, key_pem


def with_tls(service_conf: str, cert_dir: str) -> str:
    """A rendered route (`render_service_conf`) whose one `listen` line serves TLS with the files of `cert_dir`.

    Plain HTTP to that port gets nginx's 400 ("plain HTTP request was sent to HTTPS port"), never the service.
    """
    lines = service_conf.split("\n")
    listens = [i for i, line in enumerate(lines) if re.fullmatch(r"    listen [0-9.]+:[0-9]+;", line)]
    if len(listens) != 1:
        raise ValueError(f"with_tls: expected one listen line in the route, found {len(listens)}")
    i = listens[0]
    lines[i: i + 1] = [
        lines[i][:-1] + " ssl;",
        f"    ssl_certificate {cert_dir}/{CERT_FILE};",
        f"    ssl_certificate_key {cert_dir}/{KEY_FILE};",
        f"    ssl_protocols {PROTOCOLS};",
        "    ssl_session_cache off;",
    ]
    return "\n".join(lines)


def plain_http_warning(kind: str, resource_name: str, where: str) -> str:
    """The preview's words for keys sent over plain HTTP anywhere but this machine's loopback."""
    return (
        f"{kind} '{resource_name}': its keys (Bearer tokens) and requests travel over plain HTTP on {where}, "
        "where anyone on the path can read them; pass ssl_enabled=True with ssl_cert_pem_file and ssl_key_pem_file "
        "so that the front end serves HTTPS"
    )
