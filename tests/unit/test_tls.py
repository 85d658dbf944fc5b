"""Certificates the deploy makes for generated environments: issued once, renewed when due or misnamed."""

import datetime
import ipaddress

from cryptography import x509

from deploys.tls import issue, names_of, needs_new_certificate


def test_names_cover_the_inventory_name_and_address():
    assert names_of("pg-primary", "198.51.100.11") == [x509.DNSName("pg-primary"), x509.IPAddress(ipaddress.ip_address("198.51.100.11"))]
    assert names_of("db-1", "db-1.internal") == [x509.DNSName("db-1"), x509.DNSName("db-1.internal")]


def test_issued_once_then_reused_and_chained_to_the_ca(tmp_path):
    sans = names_of("pg-primary", "198.51.100.11")
    cert_path, key_path = issue(tmp_path, "pg-primary", sans, days=397, renew_days=30)
    first = cert_path.read_bytes()
    assert oct(key_path.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"
    issue(tmp_path, "pg-primary", sans, days=397, renew_days=30)
    assert cert_path.read_bytes() == first
    cert = x509.load_pem_x509_certificate(first)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_renewed_when_names_change_or_expiry_nears(tmp_path):
    sans = names_of("pg-primary", "198.51.100.11")
    cert_path, _ = issue(tmp_path, "pg-primary", sans, days=397, renew_days=30)
    assert needs_new_certificate(cert_path, sans, 30) is None
    assert needs_new_certificate(cert_path, names_of("pg-primary", "198.51.100.99"), 30) == "names changed"
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=380)
    assert needs_new_certificate(cert_path, sans, 30, now=later).startswith("expires ")
    assert needs_new_certificate(tmp_path / "absent.crt", sans, 30) == "missing"
