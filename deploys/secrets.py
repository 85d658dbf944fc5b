"""Where an environment's secrets come from: made by the deploy (local, staging) or supplied by the operator
(prod), in `secrets_dir`, outside git. See docs/secrets.md."""

import os
import re
import secrets as random_source
from pathlib import Path

from pyinfra import host
from pyinfra.api.exceptions import DeployError

from deploys import ship
from deploys.knobs import knobs


def directory():
    return Path(knobs().secrets_dir)


def keys_file(knob, *default):
    """The key file knob `knob` names, or <secrets_dir>/<default...> when it names none."""
    return Path(getattr(knobs(), knob) or directory().joinpath(*default))


def generated():
    """True where the deploy makes the secrets."""
    return knobs().secrets_source == "generate"


def missing(path):
    return DeployError(f"{host.name}: missing secret {path}: the operator supplies it (docs/secrets.md)")


def password(role):
    """A role's password: $MCP_PG_PASSWORD_<ROLE> or <secrets_dir>/passwords/<role>, made here when generated."""
    variable = "MCP_PG_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", role.upper())
    if os.environ.get(variable):
        return os.environ[variable]
    path = directory() / "passwords" / role
    if not path.exists():
        if not generated():
            raise missing(f"{path} (or ${variable})")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(random_source.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def put_private(name, content, dest, user="root", group="root", mode="600", as_user="root"):
    """A file holding a secret: readable by `user`/`group` as `mode` says, by no one else at any moment (ship.file)."""
    return ship.file(name, content, dest, mode, user=user, group=group, as_user=as_user)
