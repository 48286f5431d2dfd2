"""The headers a front end's route sets on every request it passes on: said once, for the route and the split.

A location that sets any header drops all of the server's, so a location that must pass the key on (a
canary's split, to a candidate's own front end) says them all again, from here.
"""

from __future__ import annotations

import re

PROXY_HEADERS = (
    ("Connection", '""'),
    ("Host", "$host"),
    ("Authorization", '""'),
    ("X-Forwarded-For", "$remote_addr"),
    ("X-Ms-Request-Id", '""'),
    ("X-Ms-Client-Request-Id", "$mldeploy_client_request_id"),
)


def proxy_headers(authorization: str = '""', indent: str = "    ") -> str:
    """`PROXY_HEADERS` as nginx lines, with `authorization` as the Authorization header's value: `""` (the
    server's: the key stops at the front end) or an nginx variable that passes it on where a second front end
    checks it again (a canary's candidate). Pure."""
    if authorization != '""' and not re.match(r"^\$[a-z0-9_]{1,64}$", authorization):
        raise ValueError(f'authorization: must be "" or an nginx variable ($name), got {authorization!r}')
    lines = []
    for name, value in PROXY_HEADERS:
        if name == "Authorization":
            if authorization == '""':
                lines.append(f"{indent}# The key stops here: the scoring container never sees (or logs) it.")
            value = authorization
        lines.append(f"{indent}proxy_set_header {name} {value};")
    return "\n".join(lines)
