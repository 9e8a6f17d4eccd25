"""TLS and SuperNode authentication for Flower 1.42 deployments: the key material (a CA, a SuperLink certificate, one
EC key pair per SuperNode, made with `cryptography`), checks of a user's own files, and the flags that turn them on.

    feddf flower certs --out certs --host server.example.org --nodes 3

What Flower 1.42 does with them (read in flwr/superlink, flwr/supernode; every flag below was run):
  SuperLink  `--ssl-ca-certfile CA --ssl-certfile CERT --ssl-keyfile KEY` serve Fleet, Control and Runtime APIs
             over HTTPS on one port; the SuperExec it starts connects back to --host:PORT (0.0.0.0 -> 127.0.0.1)
             and verifies CERT against CA, so CERT must name that address as well as the one the nodes use.
             `--enable-supernode-auth`: a SuperNode may only activate with a public key registered beforehand
             through the Control API (`flwr supernode register KEY.pub`); every Fleet request is signed with the
             node's private key (ECDSA over a timestamp) and checked against the registered key.
  SuperNode  `--root-certificates CA` verifies the SuperLink's certificate (there is no client certificate: the
             node proves itself with `--auth-supernode-private-key KEY`, an OpenSSH-format NIST EC private key).
  flwr       the connection in FLWR_HOME/config.toml carries `root-certificates = "CA"` instead of `insecure`.
Private keys are written 0600 (O_EXCL: an existing file is never overwritten) into a folder made 0700 (an existing
folder keeps its mode), and are never printed: `Secure` holds paths, not key bytes. The options are checked before
anything is written, and a failure part-way removes every file of the set (and the folder, when made here).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Callable

from feddf.errors import FeddfError

LOOPBACK = "127.0.0.1"
MAX_DAYS = 36500    # 100 years: far inside what X.509 dates (year 9999) and `cryptography` accept
MAX_NODES = 10000   # key pairs one `flower certs` makes (about 1 ms each); a typo such as 10**8 is refused
REGISTERED = "registered.json"  # in the state dir, next to the SuperLink's database: key fingerprint -> node id


@dataclasses.dataclass(frozen=True)
class Secure:
    """The files of a TLS + node-authentication deployment. ca: the CA certificate everyone verifies the SuperLink
    against; cert/key: the SuperLink's certificate and private key; node_keys: one private key per SuperNode (its
    public key next to it, `<key>.pub`) that `LocalFlower` starts; public_keys: what is registered on the SuperLink
    (the node_keys' public keys, or a remote deployment's)."""

    ca: Path
    cert: Path
    key: Path
    node_keys: tuple[Path, ...] = ()
    public_keys: tuple[Path, ...] = ()

    def superlink_args(self) -> list[str]:
        return ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key),
                "--enable-supernode-auth"]

    def supernode_args(self, k: int) -> list[str]:
        return ["--root-certificates", str(self.ca), "--auth-supernode-private-key", str(self.node_keys[k])]

    def files(self) -> list[Path]:
        return [self.ca, self.cert, self.key, *self.node_keys, *self.public_keys]

    def connection(self) -> str:
        """The TLS line of the flwr connection in config.toml."""
        return f'root-certificates = "{self.ca}"'


def superlink_args(sec: Secure | None) -> list[str]:
    return sec.superlink_args() if sec else ["--insecure"]


def supernode_args(sec: Secure | None, k: int) -> list[str]:
    return sec.supernode_args(k) if sec else ["--insecure"]


def connection(sec: Secure | None) -> str:
    return sec.connection() if sec else "insecure = true"


def sync_keys(flwr: Callable[..., subprocess.CompletedProcess], public_keys, record: Path | None) -> None:
    """Make the SuperLink's registered SuperNode keys exactly `public_keys`, with `flwr(*args)` running the flwr CLI
    on its connection. record (a SuperLink with a database): the keys an earlier launch registered there; those
    still wanted stay registered (their nodes keep their identity), the others are unregistered."""
    import hashlib

    done = json.loads(record.read_text()) if record is not None and record.exists() else {}
    want = {}
    for p in public_keys:  # the fingerprint of the key itself, not of its comment
        want[hashlib.sha256(Path(p).read_bytes().split()[1]).hexdigest()[:16]] = Path(p)
    for fp, node in list(done.items()):
        if fp not in want:
            supernode_cmd(flwr, "unregister", str(node))
            del done[fp]
            _save(record, done)
    for fp, p in want.items():
        if fp not in done:
            done[fp] = supernode_cmd(flwr, "register", str(p))["node-id"]
            _save(record, done)


def supernode_cmd(flwr, verb: str, arg: str) -> dict:
    """`flwr supernode VERB ARG` (register PUBKEY, unregister NODE_ID) on the connection; its JSON, or one line."""
    res = flwr("supernode", verb, arg, "feddf", "--format", "json")
    try:
        out = json.loads(res.stdout)
    except ValueError:
        out = {}
    if out.get("success") is not True:
        detail = " ".join(str(out.get("error-message") or res.stdout + res.stderr).split())
        raise FeddfError(f"flwr supernode {verb} {arg} failed: {detail[-300:]}")
    return out


def _save(record: Path | None, done: dict) -> None:
    if record is not None:
        from feddf.utils import atomic_write_json

        atomic_write_json(record, done)


# ---- making key material -------------------------------------------------------------------------------------
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def check_request(nodes: int, hosts, days: int, min_nodes: int = 1) -> None:
    """`flower certs`' --nodes, --host and --days: one line naming the bad value, before any file is written
    (min_nodes=0: a CA and SuperLink certificate alone, for SuperNode keys made elsewhere)."""
    from feddf.checks import check_range

    check_range("--nodes", nodes, lo=min_nodes, hi=MAX_NODES, fix="one key pair per SuperNode")
    check_range("--days", days, lo=1, hi=MAX_DAYS, fix="the certificates' validity")
    for h in hosts:
        if not isinstance(h, str):
            raise FeddfError(f"--host {h!r}: give a name or IP address as a string")
        try:
            ipaddress.ip_address(h)
            continue
        except ValueError:
            pass
        name = h[:-1] if h.endswith(".") else h
        if not name or len(name) > 253 or not all(_LABEL.fullmatch(part) for part in name.split(".")):
            raise FeddfError(f"--host {h!r} is neither an IP address nor a DNS name (letters, digits, '-', '.'): give "
                             "the name or address the SuperNodes reach the SuperLink at")


def private_dir(folder: Path) -> bool:
    """Make `folder` 0700 and return True; an existing folder is left as it is (its mode too): False."""
    if folder.exists():
        return False
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(folder, 0o700)  # mkdir's mode passes through the umask
    return True


def write_private(path: Path, data: bytes) -> None:
    """A private key file: created 0600 and never over an existing file (someone's key is never destroyed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FeddfError(f"{path} already exists: choose another --out (an existing key is never overwritten)") \
            from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    if path.exists():
        raise FeddfError(f"{path} already exists: choose another --out (an existing file is never overwritten)")
    path.write_bytes(data)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "feddf"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization as s

    return key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())


def make_ca(folder: Path, days: int, name: str = "feddf CA"):
    """ca.crt (+ ca.key, 0600): a self-signed CA that may only sign end-entity certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(folder / "ca.key", _pem_key(key))
    _write_public(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_server_cert(folder: Path, ca_cert, ca_key, hosts: list[str], days: int) -> tuple[Path, Path]:
    """superlink.crt (+ superlink.key, 0600) signed by the CA, valid for `hosts` and always 127.0.0.1/localhost
    (the SuperExec's own connection)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    names = []
    for h in dict.fromkeys([*hosts, LOOPBACK, "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0] if hosts else LOOPBACK))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(folder / "superlink.key", _pem_key(key))
    _write_public(folder / "superlink.crt", cert.public_bytes(serialization.Encoding.PEM))
    return folder / "superlink.crt", folder / "superlink.key"


def make_node_key(path: Path) -> Path:
    """A SuperNode key pair as Flower reads it: `path` (OpenSSH private key, P-384, 0600) and `path`.pub."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    write_private(path, key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
    _write_public(Path(f"{path}.pub"), key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH)
                  + f" {path.name}\n".encode())
    return path


def generate(folder: str | os.PathLike, nodes: int, hosts: list[str] = (), days: int = 2,
             keep_ca: bool = False) -> Secure:
    """A CA, a SuperLink certificate for `hosts` (+ 127.0.0.1) and `nodes` SuperNode key pairs in `folder` (made
    0700 when absent). The CA's private key is deleted unless keep_ca: nothing more is ever signed with a throwaway
    CA. Bad values are refused before anything is written; a failure part-way leaves none of the set behind."""
    check_request(nodes, hosts, days, min_nodes=0)
    folder = Path(folder)
    names = ["ca.key", "ca.crt", "superlink.key", "superlink.crt", *(f"node-{k}{e}" for k in range(nodes)
                                                                     for e in ("", ".pub"))]
    taken = [n for n in names if (folder / n).exists()]
    if taken:  # checked before anything is written: never half a set
        raise FeddfError(f"{folder / taken[0]} already exists: choose another --out (existing keys and certificates "
                         "are never overwritten)")
    created = private_dir(folder)
    try:
        ca_cert, ca_key = make_ca(folder, days)
        cert, key = make_server_cert(folder, ca_cert, ca_key, list(hosts), days)
        if not keep_ca:
            (folder / "ca.key").unlink()
        node_keys = tuple(make_node_key(folder / f"node-{k}") for k in range(nodes))
    except BaseException:
        for n in names:  # none of them existed before (checked above): all are this call's
            (folder / n).unlink(missing_ok=True)
        if created:
            folder.rmdir()
        raise
    return Secure(folder / "ca.crt", cert, key, node_keys, tuple(Path(f"{p}.pub") for p in node_keys))


def prepare(secure: "bool | Secure | None", folder: Path, nodes: int) -> Secure | None:
    """What LocalFlower runs with: None (plaintext), True (everything generated in `folder`) or the user's files,
    completed with a generated key pair for each of the `nodes` started here that has none."""
    if not secure:
        return None
    if secure is True:
        return generate(folder, nodes)
    if len(secure.node_keys) >= nodes:
        return secure
    private_dir(folder)
    made = tuple(make_node_key(folder / f"node-{k}") for k in range(len(secure.node_keys), nodes))
    return dataclasses.replace(secure, node_keys=secure.node_keys + made,
                               public_keys=secure.public_keys + tuple(Path(f"{p}.pub") for p in made))


# ---- a user's own files ----------------------------------------------------------------------------------------
def from_files(ca, cert, key, public_keys=(), node_keys=(), host: str = LOOPBACK) -> Secure:
    """`Secure` over a user's own files, checked here so a bad file is one line instead of a SuperLink that dies or
    nodes that retry forever: readable PEM files, CERT issued by CA and valid now, KEY the private key of CERT, CERT
    naming `host` (the address this machine reaches the SuperLink at), OpenSSH EC public keys for the nodes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    paths = {"--ssl-ca-certfile": ca, "--ssl-certfile": cert, "--ssl-keyfile": key}
    missing = [flag for flag, p in paths.items() if not p]
    if missing:
        raise FeddfError(f"{', '.join(missing)} missing: TLS needs --ssl-ca-certfile, --ssl-certfile and "
                         "--ssl-keyfile together (`feddf flower certs` makes a set)")
    ca, cert, key = (Path(p).expanduser().resolve() for p in (ca, cert, key))
    ca_c = _load(ca, "--ssl-ca-certfile", x509.load_pem_x509_certificate)
    cert_c = _load(cert, "--ssl-certfile", x509.load_pem_x509_certificate)
    key_k = _load(key, "--ssl-keyfile", lambda b: serialization.load_pem_private_key(b, None))
    try:
        cert_c.verify_directly_issued_by(ca_c)
    except Exception:  # noqa: BLE001 - ValueError/TypeError/InvalidSignature: all mean "not signed by this CA"
        raise FeddfError(f"--ssl-certfile {cert} is not issued by --ssl-ca-certfile {ca}: give the CA that signed it")\
            from None
    pub = lambda k: k.public_bytes(serialization.Encoding.DER,  # noqa: E731
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    if pub(key_k.public_key()) != pub(cert_c.public_key()):
        raise FeddfError(f"--ssl-keyfile {key} is not the private key of --ssl-certfile {cert}")
    now = _dt.datetime.now(_dt.timezone.utc)
    if not cert_c.not_valid_before_utc <= now <= cert_c.not_valid_after_utc:
        raise FeddfError(f"--ssl-certfile {cert} is not valid now (valid {cert_c.not_valid_before_utc:%Y-%m-%d} to "
                         f"{cert_c.not_valid_after_utc:%Y-%m-%d}): make a new one")
    names = cert_names(cert_c)
    if host not in names:  # Flower's SuperExec connects to the SuperLink there and verifies the certificate
        raise FeddfError(f"--ssl-certfile {cert} does not name {host} (it names {', '.join(sorted(names)) or 'none'})"
                         f": add {host} to its subjectAltName (this machine connects to the SuperLink there)")
    for p in public_keys:
        load_public_key(p)
    return Secure(ca, cert, key, tuple(Path(p).resolve() for p in node_keys),
                  tuple(Path(p).resolve() for p in public_keys))


def _load(path: Path, flag: str, parse):
    try:
        return parse(path.read_bytes())
    except OSError as e:
        raise FeddfError(f"{flag} {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise FeddfError(f"{flag} {path} is not a PEM file of the right kind (an unencrypted PEM "
                         f"{'private key' if 'key' in flag else 'certificate'})") from None


def cert_names(cert) -> set[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def load_public_key(path) -> None:
    """A SuperNode public key as `flwr supernode register` takes it: OpenSSH, NIST EC (one line when not)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = Path(path)
    try:
        k = serialization.load_ssh_public_key(p.read_bytes())
    except OSError as e:
        raise FeddfError(f"--node-public-key {p}: {e.strerror}") from None
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - UnsupportedAlgorithm too
        k = None
    if not isinstance(k, ec.EllipticCurvePublicKey):
        raise FeddfError(f"--node-public-key {p} is not an OpenSSH EC public key: make one with `feddf flower certs`"
                         " or `ssh-keygen -t ecdsa -b 384 -N '' -f node-0`")
