"""A throw-away TLS certificate for the loopback hub (the openmind_hub client speaks https only,
and only to hosts under modelers.cn, openmind.cn, ...).

    cert = Cert.make(tmp_path, "hub.modelers.cn")       # self-signed, SAN: the name + 127.0.0.1
    hub = HubServer(tls=cert, hostname="hub.modelers.cn")
    env = {"REQUESTS_CA_BUNDLE": str(cert.cert), "SSL_CERT_FILE": str(cert.cert)}  # trust it

Made with the ``openssl`` command (Debian's ``openssl`` package); the name is resolved to
127.0.0.1 by the test itself (``resolve_in_hosts``: an ``unshare --mount`` with a
bind-mounted hosts file, as devtools/cluster/dev-slurm-mn does for its nodes).
"""

from __future__ import annotations

import shlex
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


class CertError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path
    hostname: str

    @classmethod
    def make(cls, folder, hostname: str = "hub.modelers.cn", days: int = 2) -> "Cert":
        openssl = shutil.which("openssl")
        if openssl is None:
            raise CertError("the openssl command is missing (apt-get install openssl)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{hostname}.pem", folder / f"{hostname}.key"
        proc = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(days),
             "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={hostname}",
             "-addext", f"subjectAltName=DNS:{hostname},IP:127.0.0.1"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise CertError(f"openssl req failed: {proc.stderr.strip()}")
        return cls(cert, key, hostname)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def client_env(self) -> dict[str, str]:
        """Trust this certificate: requests (openmind_hub) and urllib/OpenSSL (hpcft)."""
        return {"REQUESTS_CA_BUNDLE": str(self.cert), "SSL_CERT_FILE": str(self.cert)}


def resolve_in_hosts(argv: list[str], names: list[str], hosts_file: Path) -> list[str]:
    """``argv`` run in a private mount namespace where ``names`` resolve to 127.0.0.1.

    Only that process tree sees the bind-mounted hosts file; the machine's /etc/hosts is
    untouched. Needs root (or CAP_SYS_ADMIN) and util-linux ``unshare``.
    """
    if shutil.which("unshare") is None:
        raise CertError("unshare (util-linux) is missing")
    current = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    hosts_file.write_text(current.rstrip("\n") + "\n" + "".join(f"127.0.0.1 {n}\n" for n in names))
    inner = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {shlex.join(argv)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
