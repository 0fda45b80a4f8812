"""TLS certificates and SuperNode keys for a secured deployment, made with Python ``cryptography``.

Flower's SuperLink serves its Fleet, Control and Runtime APIs over HTTPS on one port. It needs a CA
certificate, a server certificate signed by it (whose subject alternative names must list every name or
IP the SuperNodes and ``flwr`` dial) and the server's private key; SuperNodes and the ``flwr`` CLI trust
the CA (``--root-certificates`` / ``root-certificates``). With ``--enable-supernode-auth`` only nodes
whose public key was registered (``flwr supernode register``) may join; each node holds an EC (NIST
P-384) key pair in OpenSSH format, the format Flower's CLI and SuperNode read.

    python -m qkt_flower.deploy.credentials certificates/ --nodes 3 --hosts 127.0.0.1 localhost superlink
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "superlink")  # "superlink": the compose service name


@dataclass(frozen=True)
class TLSFiles:
    """The SuperLink's certificate files (PEM)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's key pair: the private key stays on the node, the public key is registered."""

    private: Path
    public: Path


def _write_private(path: Path, data: bytes) -> Path:
    """Write a private key readable by its owner only, from its first byte on: a new 0600 file, renamed over ``path``.

    A key readable by others is a leak (and many tools refuse it); a chmod after writing leaves a moment open.
    """
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the umask can only narrow 0600
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkt-flower"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls(out_dir: str | Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365) -> TLSFiles:
    """A self-signed CA and a server certificate for ``hosts`` (IP addresses or DNS names) signed by it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)  # 5 min of clock skew
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("qkt-flower CA")).issuer_name(_name("qkt-flower CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    files = TLSFiles(out / "ca.crt", out / "server.pem", out / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(cert.public_bytes(pem))
    _write_private(files.server_key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))  # fmt: skip
    return files


def make_node_key(out_dir: str | Path, name: str) -> NodeKey:
    """An EC P-384 key pair for one SuperNode, in OpenSSH format (``name`` and ``name.pub``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_private(out / name, key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))  # fmt: skip
    public = out / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode()
    )
    return NodeKey(private, public)


def make_node_keys(out_dir: str | Path, count: int, prefix: str = "supernode") -> list[NodeKey]:
    """Key pairs ``supernode-0`` ... ``supernode-{count-1}``."""
    return [make_node_key(out_dir, f"{prefix}-{k}") for k in range(count)]


def main(argv: list[str] | None = None) -> None:
    """``python -m qkt_flower.deploy.credentials OUT --nodes N``: CA, server certificate and N node keys."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the files into")
    parser.add_argument("--nodes", type=int, default=3, help="SuperNode key pairs to make (0 = none)")
    parser.add_argument("--hosts", nargs="+", default=list(DEFAULT_HOSTS),
                        help="names/IPs the SuperLink is reached at (certificate SANs)")  # fmt: skip
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    tls = make_tls(args.out, tuple(args.hosts), args.days)
    keys = make_node_keys(args.out / "keys", args.nodes)
    print(f"CA: {tls.ca_cert}\nserver certificate: {tls.server_cert}\nserver key: {tls.server_key}")
    for k in keys:
        print(f"node key: {k.private} (public: {k.public})")


if __name__ == "__main__":
    main()
