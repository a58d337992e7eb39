"""Runs arp-conformance's CLI after working around its `arp://` schema ids.

arp-conformance 0.3.7 gives its schemas `arp://` ids; Python's urljoin only resolves relative
references for schemes listed in urllib.parse.uses_relative / uses_netloc, so every relative
`$ref` fails ("Unresolvable: status.schema.json"). Registering the scheme first fixes that
without patching the package.

Usage: python run_conformance.py check run-gateway --tier smoke --strict --url http://...
"""

import sys
import urllib.parse

for registry in (urllib.parse.uses_relative, urllib.parse.uses_netloc):
    if "arp" not in registry:
        registry.append("arp")

from arp_conformance.cli import main  # noqa: E402  (must follow the registration above)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
