"""Guard for the example inventories: refuse to run against hosts nobody has filled in."""

PLACEHOLDER_SUFFIX = ".example.invalid"


def require_real_hosts(inventory_file, *groups):
    for group in groups:
        for entry in group:
            name = entry[0] if isinstance(entry, tuple) else entry
            if name.endswith(PLACEHOLDER_SUFFIX):
                raise SystemExit(
                    f"{inventory_file}: host {name!r} is a placeholder; replace every *{PLACEHOLDER_SUFFIX} host "
                    f"with your own before deploying (see docs/inventories.md)"
                )
