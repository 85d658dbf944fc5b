"""Where the fleet keeps things, and who owns the fleet that is up."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def _env_path(name, default):
    return Path(os.environ.get(name, default))


@dataclass(frozen=True)
class Layout:
    # Machine-wide: one fleet per machine (it owns the bridge and the subnet).
    state_root: Path = field(default_factory=lambda: _env_path("FLEET_STATE_ROOT", "/var/lib/mcp-fleet"))
    # The debootstrapped base survives `fleet down` (`fleet down --purge` removes it).
    cache_root: Path = field(default_factory=lambda: _env_path("FLEET_CACHE_ROOT", "/var/cache/mcp-fleet"))
    # Per checkout, git-ignored: the ssh key, ssh_config, known_hosts and the S3 credentials.
    local: Path = field(default_factory=lambda: _env_path("FLEET_LOCAL_DIR", CHECKOUT / ".fleet"))
    owner: str = str(CHECKOUT)

    @property
    def state_file(self):
        return self.state_root / "state.json"

    def read_state(self):
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # torn write from a killed run: treat as ours and converge

    def write_state(self, **values):
        self.state_root.mkdir(parents=True, exist_ok=True)
        state = dict(self.read_state() or {}, owner=self.owner, **values)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)
