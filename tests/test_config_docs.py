"""docs/config.md is generated from Pulumi.yaml: the two never differ (issue 19, item 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_docs_config_matches_pulumi_yaml() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_every_key_is_on_the_page_and_a_change_is_caught() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import config_docs
    finally:
        sys.path.pop(0)
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    page = (ROOT / "docs" / "config.md").read_text()
    for key in project["config"]:
        assert f"| `{key}` |" in page, key
    project["config"]["mldeploy:target"]["description"] = "something else"
    assert config_docs.render(project) != page
