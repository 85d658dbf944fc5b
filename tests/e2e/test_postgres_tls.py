"""PostgreSQL on the network: TLS with the database servers' CA (verify-full), pg_hba admits only hostssl lines;
operator-supplied TLS files that are missing or signed by the wrong CA are refused before any change."""

import datetime
import shutil
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.test_deploy import pyinfra_run
from tests.fleet_helpers import on

REPO = Path(__file__).resolve().parents[2]
SECRETS = REPO / ".secrets/local"
CA = SECRETS / "tls/database-ca.crt"  # PostgreSQL's certificates come from the database servers' CA


def connect_error(**params):
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect(host="pg-1", dbname="postgres", user="probe", password="wrong", connect_timeout=5, **params)
    return str(raised.value)


def test_verify_full_with_the_deploys_ca_gets_through_tls_to_pg_hba():
    message = connect_error(sslmode="verify-full", sslrootcert=str(CA))
    # The server named this machine's address and "SSL encryption": TLS was verified; pg_hba then said no,
    # because the control machine is not a client of the tier.
    assert 'no pg_hba.conf entry for host "198.51.100.1"' in message and "SSL encryption" in message


def test_plaintext_is_refused():
    assert "no encryption" in connect_error(sslmode="disable")


def test_a_certificate_from_another_ca_is_refused(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert "certificate verify failed" in connect_error(sslmode="verify-full", sslrootcert=str(other_ca))


@pytest.mark.parametrize("sslmode, expected", [
    ("verify-full", "password authentication failed for user \"replicator\""),
    ("disable", "no pg_hba.conf entry for replication connection"),
])
def test_a_replica_may_replicate_over_tls_only(sslmode, expected):
    conninfo = (f"host=pg-1 dbname=replication replication=true user=replicator password=wrong "
                f"sslmode={sslmode} sslrootcert=/etc/mcp-portal/tls/ca.crt connect_timeout=5")
    result = on("pg-2", f"psql '{conninfo}' -c 'IDENTIFY_SYSTEM'", check=False)
    assert result.returncode != 0 and expected in result.stderr


def test_operator_supplied_tls_that_is_missing_is_refused_before_any_change(tmp_path):
    before = on("pg-1", "md5sum /etc/mcp-portal/tls/server.crt").stdout
    result = pyinfra_run("-y", "--data", "secrets_source=operator", "--data", f"secrets_dir={tmp_path}")
    assert result.returncode != 0
    assert f"missing secret {tmp_path}/tls/ca.crt" in result.stdout + result.stderr
    assert on("pg-1", "md5sum /etc/mcp-portal/tls/server.crt").stdout == before


@pytest.mark.parametrize("mistake, expected", [
    ("pg-1-postgres", "pg-1: {tls}/pg-1-postgres.crt is not signed by {tls}/database-ca.crt"),
    ("database-ca", "{tls}/ca.crt and {tls}/database-ca.crt are one CA"),
], ids=["postgresql's certificate from the tier CA", "one CA for both"])
def test_operator_supplied_tls_from_the_wrong_ca_is_refused_before_any_change(tmp_path, mistake, expected):
    """The fleet's own secrets, supplied by an operator, with one mistake: PostgreSQL's certificate signed by the
    tier CA (pg-1's own), or the tier CA given as the database CA. Either would let another key pass for PostgreSQL."""
    supplied = tmp_path / "prod"
    shutil.copytree(SECRETS, supplied)
    tls = supplied / "tls"
    source = "pg-1" if mistake == "pg-1-postgres" else "ca"
    for suffix in (".crt", ".key"):
        shutil.copy(tls / f"{source}{suffix}", tls / f"{mistake}{suffix}")
    before = on("pg-1", "md5sum /etc/mcp-portal/tls/server.crt").stdout
    result = pyinfra_run("-y", "--data", "secrets_source=operator", "--data", f"secrets_dir={supplied}")
    assert result.returncode != 0
    assert expected.format(tls=tls) in result.stdout + result.stderr
    assert on("pg-1", "md5sum /etc/mcp-portal/tls/server.crt").stdout == before
