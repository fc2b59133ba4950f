"""Code style, as ament_flake8 would check it on a ROS build farm (ruff, configured in ruff.toml)."""
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.prefix) / "bin")) or shutil.which("ruff")
    assert ruff is not None, "ruff is not installed: scripts/setup_env.sh installs it"
    result = subprocess.run([ruff, "check", "g2vlm_ros", "test", "scripts", "launch"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
