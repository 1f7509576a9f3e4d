"""Find ``promtool`` (Debian's prometheus package) for the tests that run it.

In CI (``CI=true``) a missing promtool is installed with apt-get and the tests fail rather
than skip if it is still missing; elsewhere they skip with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _find(tool: str) -> str | None:
    return shutil.which(tool) or (f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else None)


def promtool_path() -> str:
    found = _find("promtool")
    if found is None and os.environ.get("CI", "").lower() == "true":
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
            check=True,
            env=env,
        )
        found = _find("promtool")
        if found is None:
            pytest.fail("promtool is still missing after apt-get install prometheus")
    if found is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found
