"""docs/config.md from Pulumi.yaml's config block: one source for every stack setting.

`python scripts/config_docs.py` rewrites the page; `--check` fails when it differs
(tests/test_config_docs.py runs that).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "config.md"


def render(project: dict) -> str:
    lines = [
        "# Stack settings",
        "",
        "Generated from `Pulumi.yaml`'s `config` block by `python scripts/config_docs.py`; edit",
        "`Pulumi.yaml`, not this page (a test fails when they differ). A stack sets them in",
        "`stacks/Pulumi.<stack>.yaml`, or with `pulumi config set mldeploy:<key> <value> [--secret]`.",
        "",
        "| key | type | default | what it sets |",
        "|---|---|---|---|",
    ]
    for key, spec in (project.get("config") or {}).items():
        spec = spec if isinstance(spec, dict) else {"default": spec}
        default = spec.get("default")
        if default is None or default == "":
            shown = "(empty)" if default == "" else ""
        else:
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        description = " ".join(str(spec.get("description", "")).split()).replace("|", "\\|")
        secret = " (secret)" if spec.get("secret") else ""
        lines.append(f"| `{key}` | {spec.get('type', 'string')}{secret} | {shown} | {description} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render(yaml.safe_load((ROOT / "Pulumi.yaml").read_text()))
    if "--check" in argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} differs from Pulumi.yaml's config block: run python scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
