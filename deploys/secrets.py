"""Where an environment's secrets come from: made by the deploy (local, staging) or supplied by the operator
(prod), in `secrets_dir`, outside git. See docs/secrets.md."""

import hashlib
import os
import re
import secrets as random_source
from pathlib import Path
from shlex import quote

from jinja2 import Template
from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File, Sha1File

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


def render(template, **values):
    """A template of templates/ rendered here, for put_private (a file holding a secret is never uploaded)."""
    return Template(Path(template).read_text(), keep_trailing_newline=True).render(**values)


def put_private(name, content, dest, user="root", group="root", mode="600", as_user="root"):
    """`content` (text) at `dest`, readable by `user`/`group` as `mode` says and by no one else at any moment: it
    travels on the command's stdin (never in argv, a log or an upload left in /tmp), lands in a temporary file
    mktemp makes beside `dest` with umask 077, and is renamed over `dest` once owned and moded. `as_user`
    writes it: the owner of the directory when that is not root, so root never writes where another user could
    plant a link. The plan compares the file's SHA-1, owner and mode (facts, read here: inside the operation they
    would run with its stdin): a converged file is no change."""
    content = content if content.endswith("\n") else content + "\n"  # what the command's stdin delivers
    current = host.get_fact(File, path=dest)
    converged = bool(current) and (current["user"], current["group"], current["mode"]) == (user, group, int(mode)) \
        and host.get_fact(Sha1File, path=dest) == hashlib.sha1(content.encode()).hexdigest()
    return _private_file(name=name, dest=dest, user=user, group=group, mode=mode, as_user=as_user,
                         converged=converged, _stdin=content)


@operation()
def _private_file(dest, user, group, mode, as_user, converged):
    if converged:
        host.noop(f"{dest} is converged")
        return
    tmp = '"$tmp"'
    script = (f"umask 077 && tmp=$(mktemp -p {quote(os.path.dirname(dest))} .mcp-portal.XXXXXX) && "
              f"{{ cat > {tmp} && chown {quote(user)}:{quote(group)} {tmp} && chmod {quote(mode)} {tmp} "
              f"&& mv -f {tmp} {quote(dest)}; }} || {{ rm -f {tmp}; exit 1; }}")
    yield script if as_user == "root" else f"runuser -u {quote(as_user)} -- sh -c {quote(script)}"
