"""Creates a container in Azurite (the Azure Storage emulator) with the emulator's well-known
account and key, signing the request with Shared Key as Azure documents it: object_store cannot
create containers, and the tests need nothing but the standard library for it.

Usage: azure_container.py ENDPOINT CONTAINER  (ENDPOINT: http://127.0.0.1:PORT)
"""

import base64
import email.utils
import hashlib
import hmac
import sys
import urllib.request

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret).
KEY = base64.b64decode(
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
VERSION = "2021-08-06"
CONTENT_TYPE = "application/octet-stream"


def create(endpoint: str, container: str) -> int:
    date = email.utils.formatdate(usegmt=True)
    # VERB, then Content-Encoding … Range (Content-Length empty for 0), canonical headers and
    # the canonical resource (path-style: the account twice).
    fields = ["PUT", "", "", "", "", CONTENT_TYPE, "", "", "", "", "", ""]
    to_sign = (
        "\n".join(fields)
        + f"\nx-ms-date:{date}\nx-ms-version:{VERSION}\n"
        + f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    )
    signature = base64.b64encode(
        hmac.new(KEY, to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    request = urllib.request.Request(
        f"{endpoint}/{ACCOUNT}/{container}?restype=container",
        method="PUT",
        data=b"",
        headers={
            "x-ms-date": date,
            "x-ms-version": VERSION,
            "Content-Type": CONTENT_TYPE,
            "Authorization": f"SharedKey {ACCOUNT}:{signature}",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


if __name__ == "__main__":
    status = create(sys.argv[1], sys.argv[2])
    if status != 201:
        sys.exit(f"creating container {sys.argv[2]}: HTTP {status}")
