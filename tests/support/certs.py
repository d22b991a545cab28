"""Certificate authorities and certificates for TLS tests, made with the `openssl` command.

Keys are EC P-256 (fast to generate; gRPC and etcd accept them). Certificates are valid for one
day, which outlives any test run. A server certificate names 127.0.0.1 and localhost and may also
be used as a client certificate (a health probe uses it); a client certificate is for clients only.
"""

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import find_binary

_DAYS = "1"
_CURVE = "ec_paramgen_curve:prime256v1"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA in `directory`; issue() signs certificates with it."""

    name: str
    directory: Path
    pair: KeyPair

    @property
    def cert(self) -> Path:
        return self.pair.cert

    @classmethod
    def create(cls, directory: Path, name: str) -> "CertificateAuthority":
        directory.mkdir(parents=True, exist_ok=True)
        pair = KeyPair(directory / f"{name}.pem", directory / f"{name}-key.pem")
        extensions = directory / f"{name}.ext"
        extensions.write_text(
            "[v3_ca]\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\n"
        )
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", _CURVE, "-nodes",
            "-days", _DAYS, "-subj", f"/CN={name}",
            "-config", str(extensions), "-extensions", "v3_ca",
            "-keyout", str(pair.key), "-out", str(pair.cert),
        )  # fmt: skip
        return cls(name, directory, pair)

    def issue(self, name: str, *, server: bool) -> KeyPair:
        """A certificate with CN=name signed by this CA.

        server=True: SAN IP:127.0.0.1 and DNS:localhost, usable for serverAuth and clientAuth.
        server=False: clientAuth only, no SAN.
        """
        pair = KeyPair(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")
        request = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        usage = "serverAuth, clientAuth" if server else "clientAuth"
        lines = [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            f"extendedKeyUsage = {usage}",
        ]
        if server:
            lines.append("subjectAltName = IP:127.0.0.1, DNS:localhost")
        extensions.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", _CURVE, "-nodes",
            "-subj", f"/CN={name}", "-keyout", str(pair.key), "-out", str(request),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(request), "-days", _DAYS,
            "-CA", str(self.pair.cert), "-CAkey", str(self.pair.key),
            "-set_serial", str(secrets.randbits(62) + 1),
            "-extfile", str(extensions), "-out", str(pair.cert),
        )  # fmt: skip
        return pair


@dataclass(frozen=True)
class Pki:
    """What the TLS tests need: the etcd server's CA with a server and a client certificate, and
    an unrelated CA with its own client certificate (which the server must refuse)."""

    ca: CertificateAuthority
    server: KeyPair
    client: KeyPair
    other_ca: CertificateAuthority
    other_client: KeyPair

    @classmethod
    def create(cls, directory: Path) -> "Pki":
        ca = CertificateAuthority.create(directory / "ca", "piccolo-test-ca")
        other = CertificateAuthority.create(directory / "other-ca", "unrelated-ca")
        return cls(
            ca=ca,
            server=ca.issue("etcd-server", server=True),
            client=ca.issue("piccolo-agent", server=False),
            other_ca=other,
            other_client=other.issue("intruder", server=False),
        )


def _openssl(*args: str) -> None:
    result = subprocess.run(
        [find_binary("openssl"), *args], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr}")
