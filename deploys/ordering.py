"""Cross-host ordering. pyinfra orders each host's operations and merges hosts through the operations they
share (the same call site); an operation only some hosts run gives no order against other hosts' operations.
A barrier is a shared, empty operation: every host that calls it from the same line waits there for all."""

from pyinfra.api import operation


@operation(is_idempotent=True)
def barrier():
    """Changes nothing and runs no command."""
    return
    yield
