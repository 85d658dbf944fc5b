"""TLS for every network listener: two CAs, and certificates per host and service.

The database CA signs only PostgreSQL's certificates (with Patroni's REST API, the same user's): PgBouncer and
HAProxy trust it alone, so no other key on any host (PgBouncer's, etcd's, the exporters') can pass for a database
server. The tier CA signs every other certificate. Every host trusts both for everything else.

local and staging: the deploy makes the CAs and the certificates on the control machine, into
`<secrets_dir>/tls` (git-ignored), and renews a certificate that nears expiry or whose names changed.
prod: the operator supplies them there (outside git) and the deploy only checks and ships them.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyinfra import host
from pyinfra.api import DeployError, deploy
from pyinfra.operations import files

from deploys import secrets, ship
from deploys.datasource import address_of
from deploys.knobs import knobs
from hostside import layout

TIER_CA = "ca"
DATABASE_CA = "database-ca"
DATABASE_ROLE = "postgres"  # the role of PostgreSQL's certificate on a database host: <host>-postgres.crt
CA_TITLES = {TIER_CA: "database tier CA", DATABASE_CA: "database servers CA"}


def issuer_of(role):
    return DATABASE_CA if role == DATABASE_ROLE else TIER_CA


def names_of(name, address):
    """What the host's certificate must name: its inventory name and, when it has one, its address."""
    sans = [x509.DNSName(name)]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        if address != name:
            sans.append(x509.DNSName(address))
    return sans


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def ensure_ca(tls_dir, days, name=TIER_CA):
    """A CA of a generated environment (`name`: TIER_CA or DATABASE_CA): made once, reused by every later run."""
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = tls_dir / f"{name}.crt", tls_dir / f"{name}.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        # A CA made before the deploy added key identifiers: strict verifiers (Python 3.13's default) refuse its
        # certificates, so it is replaced, and every certificate with it (see needs_new_certificate).
        if _key_identifier(cert, x509.SubjectKeyIdentifier):
            return cert, serialization.load_pem_private_key(key_path.read_bytes(), None)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"MCP Portal {CA_TITLES[name]} ({tls_dir.parent.name})")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10 * days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _key_identifier(cert, extension):
    try:
        found = cert.extensions.get_extension_for_class(extension).value
    except x509.ExtensionNotFound:
        return None
    return found.digest if extension is x509.SubjectKeyIdentifier else found.key_identifier


def issued_by(cert, ca_cert):
    return _key_identifier(cert, x509.AuthorityKeyIdentifier) == _key_identifier(ca_cert, x509.SubjectKeyIdentifier)


def needs_new_certificate(cert_path, sans, renew_days, ca_cert, now=None):
    if not cert_path.exists():
        return "missing"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if not issued_by(cert, ca_cert):
        return "not issued by the current CA"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc - now < datetime.timedelta(days=renew_days):
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if set(have) != set(sans):
        return "names changed"
    return None


def issue(tls_dir, name, sans, days, renew_days, ca=TIER_CA):
    """The host's certificate and key in tls_dir, signed by the CA `ca`, (re)issued only when missing, near expiry,
    misnamed or signed by another CA."""
    cert_path, key_path = tls_dir / f"{name}.crt", tls_dir / f"{name}.key"
    ca_cert, ca_key = ensure_ca(tls_dir, days, ca)
    if not needs_new_certificate(cert_path, sans, renew_days, ca_cert):
        return cert_path, key_path
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def local_files(role=""):
    """(host.crt, host.key) on the control machine for this host, or for one of its services with a key of its own
    (`role`: <host>-<role>.crt); makes them in generated environments, checks who signed them in supplied ones."""
    tls_dir = secrets.directory() / "tls"
    name = f"{host.name}-{role}" if role else host.name
    ca = issuer_of(role)
    ca_path = authorities()[ca]
    if secrets.generated():
        return issue(tls_dir, name, names_of(host.name, address_of(host)), knobs().tls_days, knobs().tls_renew_days, ca)
    cert_path, key_path = _supplied(tls_dir / f"{name}.crt", tls_dir / f"{name}.key")
    if not issued_by(x509.load_pem_x509_certificate(cert_path.read_bytes()), x509.load_pem_x509_certificate(ca_path.read_bytes())):
        raise DeployError(f"{host.name}: {cert_path} is not signed by {ca_path} (its authority key identifier): "
                          f"{'PostgreSQL' if ca == DATABASE_CA else 'every certificate but PostgreSQL'}'s must be (docs/secrets.md)")
    return cert_path, key_path


def authorities():
    """{TIER_CA: path, DATABASE_CA: path}: the CA certificates on the control machine; made in generated
    environments. Supplied ones must be two CAs: one would let any host's key pass for a database server."""
    tls_dir = secrets.directory() / "tls"
    paths = {name: tls_dir / f"{name}.crt" for name in (TIER_CA, DATABASE_CA)}
    if secrets.generated():
        for name in paths:
            ensure_ca(tls_dir, knobs().tls_days, name)
        return paths
    _supplied(*paths.values())
    identifiers = {_key_identifier(x509.load_pem_x509_certificate(p.read_bytes()), x509.SubjectKeyIdentifier) for p in paths.values()}
    if len(identifiers) != 2 or None in identifiers:
        raise DeployError(f"{host.name}: {paths[TIER_CA]} and {paths[DATABASE_CA]} are one CA (or lack key identifiers): "
                          "the database CA must sign PostgreSQL's certificates only (docs/secrets.md)")
    return paths


def _supplied(*paths):
    """The operator's files, each of which must exist."""
    for path in paths:
        if not path.exists():
            raise secrets.missing(path)
    return paths


@deploy("TLS certificates")
def certificates(owner="root", remote=layout.TLS_DIR, role=""):
    """Ship this host's certificate and key (0600, readable by `owner` only) for `role` (see local_files) to
    `remote`, with ca.crt (both CAs: what every client and peer here trusts) and database-ca.crt (the database
    servers' alone: what PgBouncer trusts); returns the operations by what they ship, for the services that must
    reload when one changes."""
    cert, key = local_files(role)
    cas = authorities()
    files.directory(name="TLS directory", path=remote, user="root", group=owner, mode="750")
    return {
        "CA certificates": ship.file("CA certificates (the tier's and the database servers')",
                                     cas[TIER_CA].read_text() + cas[DATABASE_CA].read_text(), f"{remote}/ca.crt",
                                     "644", group=owner),
        "database CA": ship.copy("The database servers' CA certificate", cas[DATABASE_CA], f"{remote}/database-ca.crt",
                                 "644", group=owner),
        "certificate": ship.copy("Host certificate", cert, f"{remote}/server.crt", "644", group=owner),
        "TLS key": secrets.put_private("Host key", key.read_text(), f"{remote}/server.key", user=owner, group=owner),
    }
