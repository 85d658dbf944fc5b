"""An HTTPS request made on a tier host by its own python3 (no curl there), checked against the tier's CA."""

import json

SCRIPT = """python3 - <<'EOF'
import base64, json, ssl, urllib.error, urllib.request
spec = json.loads({spec!r})
context = ssl.create_default_context(cafile=spec["ca"])
if spec["cert"]:
    context.load_cert_chain(spec["cert"], spec["key"])
request = urllib.request.Request(spec["url"], method=spec["method"])
if spec["auth"]:
    request.add_header("Authorization", "Basic " + base64.b64encode(spec["auth"].encode()).decode())
try:
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        print(response.status, response.read().decode()[:2000].replace(chr(10), " "))
except urllib.error.HTTPError as error:
    print(error.code)
except (urllib.error.URLError, OSError) as error:
    print(0, str(getattr(error, "reason", error)))
EOF"""


def https(target, url, ca, cert=None, key=None, auth=None, method="GET"):
    """(status, body) of `url` requested from `target`; status 0 when no HTTP answer came (TLS refused)."""
    spec = json.dumps({"url": url, "ca": ca, "cert": cert, "key": key, "auth": auth, "method": method})
    status, _, body = target.host.check_output(SCRIPT.format(spec=spec)).partition(" ")
    return int(status), body
