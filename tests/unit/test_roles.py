"""Roles as data: SCRAM verifiers computed here, and the SQL that converges a role (none when it matches)."""

import base64

from deploys.knobs import RoleSpec
from deploys.roles import scram_verifier, statements, verifier_matches

# Made by PostgreSQL 17.12 on the fleet: CREATE ROLE verifier_probe PASSWORD 'secret' (random salt).
POSTGRES_MADE = ("SCRAM-SHA-256$4096:RKErT9bxybKLgKIeZhro1g==$mVYfLw9QAHcHOJgDhZnYrnBCaNSvjhuaZceffsyj2FQ="
                 ":hm/yCLbFXHOaFGJ5To+y8ojwhw6P5aoYYtUmle0n2GU=")


def test_a_verifier_postgresql_made_is_recognised_and_ours_has_its_shape():
    assert verifier_matches("secret", POSTGRES_MADE) and not verifier_matches("Secret", POSTGRES_MADE)
    salt = "RKErT9bxybKLgKIeZhro1g=="
    assert scram_verifier("secret", salt=base64.b64decode(salt)) == POSTGRES_MADE


def test_a_verifier_matches_its_password_only():
    verifier = scram_verifier("right")
    assert verifier_matches("right", verifier)
    assert not verifier_matches("wrong", verifier)
    assert not verifier_matches("right", None) and not verifier_matches("right", "md5abc")


def live_role(**changes):
    role = {"login": True, "replication": False, "bypassrls": False, "createdb": False, "createrole": False,
            "password": scram_verifier("pw"), "member_of": [], "settings": ["statement_timeout=30s"]}
    return role | changes


SPEC = RoleSpec(login=True, settings={"statement_timeout": "30s"})


def test_a_matching_role_needs_no_statement():
    assert statements("portal_app", SPEC, live_role(), "pw") == []


def test_a_missing_role_is_created_with_a_verifier_not_the_password():
    sql = statements("portal_app", SPEC, None, "pw")
    assert sql[0] == ("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portal_app') THEN "
                      'CREATE ROLE "portal_app"; END IF; END $$;')
    assert sql[1] == 'ALTER ROLE "portal_app" LOGIN NOREPLICATION NOBYPASSRLS NOCREATEDB NOCREATEROLE;'
    assert sql[2].startswith("ALTER ROLE \"portal_app\" PASSWORD 'SCRAM-SHA-256$4096:") and "pw'" not in sql[2]
    assert sql[3:] == ["ALTER ROLE \"portal_app\" SET \"statement_timeout\" = '30s';"]


def test_drift_is_converged():
    drifted = live_role(bypassrls=True, password=scram_verifier("old"), member_of=["pg_monitor"],
                        settings=["statement_timeout=1h", "work_mem=1GB"])
    sql = statements("portal_app", SPEC, drifted, "pw")
    assert sql[0] == 'ALTER ROLE "portal_app" LOGIN NOREPLICATION NOBYPASSRLS NOCREATEDB NOCREATEROLE;'
    assert sql[1].startswith("ALTER ROLE \"portal_app\" PASSWORD 'SCRAM-SHA-256$")
    assert sql[2:] == ["ALTER ROLE \"portal_app\" SET \"statement_timeout\" = '30s';",
                       'ALTER ROLE "portal_app" RESET "work_mem";', 'REVOKE "pg_monitor" FROM "portal_app";']


def test_a_group_role_has_no_password():
    assert statements("portal_owner", RoleSpec(), live_role(login=False, password=None, settings=[]), None) == []


def test_a_settings_value_with_a_quote_stays_one_literal():
    sql = statements("portal_app", RoleSpec(login=True, settings={"search_path": "a', b"}), live_role(), "pw")
    assert sql == ["ALTER ROLE \"portal_app\" SET \"search_path\" = 'a'', b';", 'ALTER ROLE "portal_app" RESET "statement_timeout";']
