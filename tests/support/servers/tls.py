"""A throwaway certificate authority for TLS tests (the openssl command line)."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.support.servers.common import ServerError, binary


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [binary("openssl"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ServerError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


class TestCA:
    """A throwaway certificate authority (openssl CLI, EC P-256: fast to generate).

    ``cert_file`` is what clients pass as ``ca_certs``; issue() makes leaf certificates.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, base_dir: str | os.PathLike[str], name: str = "iotgw test CA") -> None:
        base = Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="ca-", dir=base))
        self.name = name
        self.cert_file = self.dir / "ca.crt"
        self.key_file = self.dir / "ca.key"
        openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "30", "-subj", f"/CN={name}",
            "-keyout", str(self.key_file), "-out", str(self.cert_file),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
            cwd=self.dir,
        )

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        sans: Sequence[str] = ("IP:127.0.0.1", "DNS:localhost"),
        days: int = 30,
    ) -> tuple[Path, Path]:
        """(cert_file, key_file) for a server (with SANs) or a client (clientAuth)."""
        stem = "".join(c if c.isalnum() else "_" for c in common_name)
        stem = f"{stem}-{secrets.token_hex(3)}"
        key, csr, cert = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        ext_file = self.dir / f"{stem}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
        ]
        if server and sans:
            lines.append(f"subjectAltName={','.join(sans)}")
        ext_file.write_text("\n".join(lines) + "\n")
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(csr),
            cwd=self.dir,
        )
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert_file),
            "-CAkey", str(self.key_file), "-set_serial", f"0x{secrets.token_hex(8)}",
            "-days", str(days), "-extfile", str(ext_file), "-out", str(cert),
            cwd=self.dir,
        )
        return cert, key
