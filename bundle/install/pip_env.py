"""The environment of a pip that must see only the wheels it is given (build's lock check, install's venv).

Standard library only: install runs it with the site's bare python3.
"""

from __future__ import annotations

import os


def offline_pip_env() -> dict[str, str]:
    """The environment for a pip that must see the bundle's wheels and nothing else: no pip config
    file and no PIP_* settings (a PIP_FIND_LINKS or index on this machine would hide a wheel the
    bundle lacks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env
