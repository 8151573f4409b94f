"""surroflos asks libgomp for passive waiting when it is imported before torch, and never overrides the user."""

import os
import subprocess
import sys

import pytest

CODE = "import os, sys\n{pre}import surroflos\nprint(os.environ.get('OMP_WAIT_POLICY', 'unset'))"


@pytest.mark.parametrize("pre, preset, want", [
    ("", None, "PASSIVE"),                      # the `surroflos` command: before torch, so libgomp reads it
    ("", "ACTIVE", "ACTIVE"),                   # a value the user set wins
    ("import torch\n", None, "unset"),          # torch already loaded libgomp: setting it now would be a lie
])
def test_wait_policy(pre, preset, want):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", CODE.format(pre=pre)], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == want
