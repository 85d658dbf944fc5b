"""Certificates the deploy makes for generated environments: issued once, renewed when due or misnamed, from the CA
that their role calls for."""

import datetime
import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from deploys.tls import DATABASE_CA, DATABASE_ROLE, issue, issuer_of, names_of, needs_new_certificate


def test_names_cover_the_inventory_name_and_address():
    assert names_of("pg-1", "198.51.100.11") == [x509.DNSName("pg-1"), x509.IPAddress(ipaddress.ip_address("198.51.100.11"))]
    assert names_of("db-1", "db-1.internal") == [x509.DNSName("db-1"), x509.DNSName("db-1.internal")]


def test_issued_once_then_reused_and_chained_to_the_ca(tmp_path):
    sans = names_of("pg-1", "198.51.100.11")
    cert_path, key_path = issue(tmp_path, "pg-1", sans, days=397, renew_days=30)
    first = cert_path.read_bytes()
    assert oct(key_path.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"
    issue(tmp_path, "pg-1", sans, days=397, renew_days=30)
    assert cert_path.read_bytes() == first
    cert = x509.load_pem_x509_certificate(first)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_renewed_when_names_change_or_expiry_nears(tmp_path):
    sans = names_of("pg-1", "198.51.100.11")
    cert_path, _ = issue(tmp_path, "pg-1", sans, days=397, renew_days=30)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    assert needs_new_certificate(cert_path, sans, 30, ca) is None
    assert needs_new_certificate(cert_path, names_of("pg-1", "198.51.100.99"), 30, ca) == "names changed"
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=380)
    assert needs_new_certificate(cert_path, sans, 30, ca, now=later).startswith("expires ")
    assert needs_new_certificate(tmp_path / "absent.crt", sans, 30, ca) == "missing"


def handshake(cert_path, key_path, cafile):
    """The subject a strict client trusting `cafile` sees from a server with this certificate, or ssl.SSLError."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cafile))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    ours, theirs = socket.socketpair()
    with ours, theirs:
        accepted = threading.Thread(target=_serve, args=(server, theirs))
        accepted.start()
        try:
            with client.wrap_socket(ours, server_hostname="pg-1") as tls:
                return tls.getpeercert()["subject"]
        finally:
            accepted.join()


def _serve(server, sock):
    try:
        server.wrap_socket(sock, server_side=True).close()
    except (ssl.SSLError, OSError):
        pass  # the client refused the certificate


def test_strict_verifiers_accept_the_chain(tmp_path):
    """Python 3.13 (as on the hosts) verifies with VERIFY_X509_STRICT by default: key identifiers are required."""
    cert_path, key_path = issue(tmp_path, "pg-1", names_of("pg-1", "198.51.100.11"), 397, 30)
    assert handshake(cert_path, key_path, tmp_path / "ca.crt") == ((("commonName", "pg-1"),),)


def test_only_postgresqls_certificate_comes_from_the_database_ca(tmp_path):
    """PgBouncer trusts the database CA alone: a certificate naming the same host from the tier CA (the exporters',
    PgBouncer's, etcd's) does not pass for PostgreSQL; PostgreSQL's does, and every host's trust in both accepts it."""
    sans = names_of("pg-1", "198.51.100.11")
    assert issuer_of(DATABASE_ROLE) == DATABASE_CA and issuer_of("exporter") == issuer_of("") == "ca"
    postgres = issue(tmp_path, "pg-1-postgres", sans, 397, 30, ca=DATABASE_CA)
    exporter = issue(tmp_path, "pg-1-exporter", sans, 397, 30)
    database_ca = tmp_path / "database-ca.crt"
    assert handshake(*postgres, database_ca) == ((("commonName", "pg-1-postgres"),),)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        handshake(*exporter, database_ca)
    both = tmp_path / "both.crt"
    both.write_bytes((tmp_path / "ca.crt").read_bytes() + database_ca.read_bytes())
    assert handshake(*exporter, both) and handshake(*postgres, both)
    # A certificate the other CA signed is re-issued from the right one.
    ca = x509.load_pem_x509_certificate(database_ca.read_bytes())
    assert needs_new_certificate(exporter[0], sans, 30, ca) == "not issued by the current CA"


def test_a_ca_without_key_identifiers_is_replaced_and_its_certificates_reissued(tmp_path):
    sans = names_of("pg-1", "198.51.100.11")
    cert_path, _ = issue(tmp_path, "pg-1", sans, 397, 30)
    old_ca = (tmp_path / "ca.crt").read_bytes()
    key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate(old_ca)
    bare = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "ca.crt").write_bytes(bare.public_bytes(serialization.Encoding.PEM))
    first = cert_path.read_bytes()
    issue(tmp_path, "pg-1", sans, 397, 30)
    assert (tmp_path / "ca.crt").read_bytes() not in (old_ca, bare.public_bytes(serialization.Encoding.PEM))
    assert cert_path.read_bytes() != first
    x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()))
