"""Every file the deploy writes on a host, and the trees it ships (hostside/, sql/, the tenant module's sources).

One fact per file or tree, read at plan time, decides whether it is converged: a converged file is a no-change
operation and costs one command, where pyinfra's put costs five or six (File, SHA-1 and the parent directory,
read once to plan and again to run). That is most of a converged deploy's commands. The plan's read is the run's:
a file that an earlier operation of the same run changes is written with `rewrite` (Patroni's bootstrap appends
to pg_hba.conf).

A file that is not converged travels on the command's stdin (never in argv, a log or an upload left in /tmp), lands
in a temporary file mktemp makes beside `dest` with umask 077, and is renamed over `dest` once owned and moded: no
reader ever sees it half-written or more open than `mode`, and it replaces a link planted at `dest` instead of
following it. `as_user` writes it: the owner of the directory when that is not root, so root never writes where
another user could plant a link.
"""

import hashlib
import os
from pathlib import Path
from shlex import quote

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.util import get_template
from pyinfra.operations import files

from deploys.facts import FileState, TreeState

REPO = Path(__file__).resolve().parents[1]


def file(name, content, dest, mode, user="root", group="root", as_user="root", create_remote_dir=False, rewrite=False):
    """`content` (text) at `dest`, owned by `user`:`group` with `mode` (octal digits, as a string). `rewrite`: an
    earlier operation of this run changes the file (what the plan read is stale), so it is written regardless."""
    content = content if content.endswith("\n") else content + "\n"  # what the command's stdin delivers
    converged = not rewrite and host.get_fact(FileState, path=dest) == file_state(content, mode, user, group)
    return _written(name=name, dest=dest, commands=write_commands(dest, mode, user, group, as_user, create_remote_dir),
                    converged=converged, _stdin=content)


def template(name, src, dest, mode, user="root", group="root", as_user="root", create_remote_dir=False, rewrite=False,
             **data):
    """`file` of `render(src, **data)`."""
    return file(name, render(src, **data), dest, mode, user=user, group=group, as_user=as_user,
                create_remote_dir=create_remote_dir, rewrite=rewrite)


def render(src, **data):
    """The repository's template `src` rendered here, as pyinfra renders them (strict: an undefined name fails)."""
    return get_template(str(REPO / src)).render(host=host, **data)


def copy(name, src, dest, mode, **options):
    """The repository's file `src` (relative to its root, or absolute), then `file`."""
    return file(name, (REPO / src).read_text(), dest, mode, **options)


def file_state(content, mode, user, group):
    """What FileState reads where `content` was written so."""
    return {"user": user, "group": group, "mode": mode.lstrip("0") or "0",
            "sha1": hashlib.sha1(content.encode()).hexdigest()}


def write_commands(dest, mode, user, group, as_user="root", create_remote_dir=False):
    """Shell: the file on stdin written to `dest` (see the module's docstring)."""
    directory = quote(os.path.dirname(dest))
    tmp = '"$tmp"'
    script = (f"umask 077 && tmp=$(mktemp -p {directory} .mcp-portal.XXXXXX) && "
              f"{{ cat > {tmp} && chown {quote(user)}:{quote(group)} {tmp} && chmod {quote(mode)} {tmp} "
              f"&& mv -f {tmp} {quote(dest)}; }} || {{ rm -f {tmp}; exit 1; }}")
    return [*([f"mkdir -p {directory}"] if create_remote_dir else []),
            script if as_user == "root" else f"runuser -u {quote(as_user)} -- sh -c {quote(script)}"]


@operation()
def _written(dest, commands, converged):
    if converged:
        host.noop(f"{dest} is converged")
        return
    yield from commands


def tree_state(src, mode, dir_mode, excluded):
    """What TreeState reads on a host where `src` (a local directory) is shipped, owned by root."""
    src = Path(src)
    state = {"": ("d", dir_mode, "root", "root", None)}
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if any(Path(part).match(pattern) for part in relative.parts for pattern in excluded):
            continue
        if path.is_dir():
            state[str(relative)] = ("d", dir_mode, "root", "root", None)
        else:
            state[str(relative)] = ("f", mode, "root", "root", hashlib.sha1(path.read_bytes()).hexdigest())
    return state


def tree(name, src, dest, mode="644", dir_mode="755", excluded=()):
    """The local directory `src` at `dest`, exactly (what is not in `src` is removed, but `excluded` names, which
    are neither shipped nor removed). Converged, it is one command; otherwise pyinfra's sync does the work."""
    excluded = tuple(excluded)
    if host.get_fact(TreeState, path=dest, excluded=excluded) == tree_state(src, mode, dir_mode, excluded):
        return _written(name=name, dest=dest, commands=[], converged=True)
    return files.sync(name=name, src=str(src), dest=dest, delete=True, mode=mode, dir_mode=dir_mode, user="root",
                      group="root", exclude=list(excluded),
                      exclude_dir=[p for pattern in excluded for p in (pattern, f"*/{pattern}")])

