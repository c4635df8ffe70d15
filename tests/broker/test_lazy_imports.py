"""The attester's path imports only what it uses (issue 4 §8: the attested start stays cheap).

``teeserve serve --key-broker`` imports ``teeserve.broker.obtain_secrets`` and the evidence providers;
the broker's own machinery (SQLite audit, pyOpenSSL server, DCAP, the policy loader) must not come with
it. Checked in a fresh interpreter, where nothing else has imported those modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from teeserve.broker import obtain_secrets, obtain_from_env, KeyReleaseDenied, BrokerUnreachable
from teeserve.provision import decode_secret
from teeserve.attest import sim
print(json.dumps(sorted(sys.modules)))
"""

_BROKER_ONLY = ("sqlite3", "OpenSSL", "dcap_qvl", "teeserve.attest._policy_load", "teeserve.broker._audit",
                "teeserve.broker._broker", "tomllib")


def test_attester_path_leaves_the_broker_machinery_unimported() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout))
    assert "teeserve.broker._obtain" in loaded  # the probe really took the attester's path
    unexpected = sorted(m for m in _BROKER_ONLY if m in loaded)
    assert unexpected == []


def test_every_exported_name_still_resolves() -> None:
    import teeserve.attest
    import teeserve.broker
    import teeserve.provision

    for pkg in (teeserve.attest, teeserve.broker, teeserve.provision):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, f"{pkg.__name__}.{name}"
