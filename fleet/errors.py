"""The one error the fleet raises: its message is a single line that names the problem and what to do."""


class FleetError(Exception):
    exit_code = 2
