"""Host data helpers: where a key was set (so a bad value's error names the file to fix), and a host's address."""

from pyinfra import host, inventory


def source_of(key, of=None):
    """Where `key` is set for host `of` (default: the host being planned)."""
    of = host if of is None else of  # not `of or host`: a pyinfra Host has no truth value
    if key in inventory.get_override_data():
        return "--data on the command line"
    if key in inventory.get_host_data(of.name):
        return f"inventory host {of.name}"
    for group in of.groups:
        if key in inventory.get_group_data(group):
            return f"group_data/{group}.py"
    if key in inventory.get_data():
        return "group_data/all.py"
    return "the default (deploys/knobs.py)"


def address_of(other):
    """The address a host is reached at: its inventory ssh_hostname, else its name."""
    return other.data.get("ssh_hostname", other.name)


def refused(exc, of=None):
    """The DeployError for a check's one-line `exc` (its message may start with the knob it is about): the host,
    where that knob was set, and the message."""
    from pyinfra.api.exceptions import DeployError

    from deploys.knobs import KNOBS
    of = host if of is None else of  # not `of or host`: a pyinfra Host has no truth value
    knob = str(exc).split(":", 1)[0]
    return DeployError(f"{of.name}: {source_of(knob, of)}: {exc}" if knob in KNOBS else f"{of.name}: {exc}")
