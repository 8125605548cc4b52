"""Schemathesis hooks for the API contract test (tests/it/contract.rs).

They teach schemathesis what the OpenAPI document states in words only:
the formats of our own, the window a token's expiry must fall in (by
the database's clock, which no schema can say), and that every generated
Idempotency-Key stands for one request (a key reused with another body is
422 by the contract; that is tested in tests/it/idempotency.rs). Nothing here
loosens a check.
"""

import base64
import datetime
import itertools
import json
import os
import random
import uuid

import schemathesis
from hypothesis import strategies as st

# A CA certificate (self-signed, P-256): what a private CA's bundle holds.
PEM_CA = """-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUbVkHk1J5+VetlnstVL9oZfwKWBcwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUc2NoZW1hdGhlc2lzIHRlc3QgQ0EwIBcNMjYxMjAyMTkyMTU1
WhgPMjEyNjExMDgxOTIxNTVaMB8xHTAbBgNVBAMMFHNjaGVtYXRoZXNpcyB0ZXN0
IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZyTmhhnFzmBcLeJaR5ABSWpn
tpstY8eC2PH6M+fUUsIlg/2DG4JdF1D9ND2tkzBfBKwgljKqE2yhhigBpUqrHqNT
MFEwHQYDVR0OBBYEFIeIWSIQpeq2uw3rHLOnfLKDhLvzMB8GA1UdIwQYMBaAFIeI
WSIQpeq2uw3rHLOnfLKDhLvzMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
SAAwRQIhANsiaJ3yZajeEg2hKt2dAD4hsgkCc0eBaPvhGrIdk6k8AiBIMtgm0oBb
L2uLQtPOjrxv/u33ckWjX3dNlPnHHcNE8A==
-----END CERTIFICATE-----
"""

schemathesis.openapi.format(
    "pem-certificates",
    st.sampled_from([PEM_CA, PEM_CA + PEM_CA]),
)

_host = st.sampled_from(["127.0.0.1", "ns1.example.com", "[::1]", "localhost", "192.0.2.53"])
schemathesis.openapi.format(
    "host-port",
    st.builds(lambda h, p: f"{h}:{p}", _host, st.integers(min_value=1, max_value=65535)),
)

# A kubeconfig as `kubectl config view --minify --flatten -o json` prints
# it, with a token.
KUBECONFIG = json.dumps({
    "apiVersion": "v1", "kind": "Config", "current-context": "prod",
    "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "deployer"}}],
    "clusters": [{"name": "prod", "cluster": {"server": "https://k8s.example.com:6443",
                  "certificate-authority-data": base64.b64encode(PEM_CA.encode()).decode()}}],
    "users": [{"name": "deployer", "user": {"token": "a-service-account-token"}}],
})
schemathesis.openapi.format("kubeconfig-json", st.just(KUBECONFIG))

# An SSH host key (with and without its comment) and a private key without
# a passphrase, made for this file by ssh-keygen; they open nothing.
SSH_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPNVuX+imp58Tmi8TOMHWdBamWSZB+EPgi033VJry3Og"
schemathesis.openapi.format(
    "openssh-public-key", st.sampled_from([SSH_HOST_KEY, SSH_HOST_KEY + " root@edge"]),
)
SSH_PRIVATE_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDzVbl/opqefE5ovEzjB1nQWplkmQfhD4ItN91Sa8tzoAAAAIgaWg80GloP
NAAAAAtzc2gtZWQyNTUxOQAAACDzVbl/opqefE5ovEzjB1nQWplkmQfhD4ItN91Sa8tzoA
AAAEBpW5oAXVdD74uGs4/qR5Gkm9vRRW0SWUc6CqiO2EMX3PNVuX+imp58Tmi8TOMHWdBa
mWSZB+EPgi033VJry3OgAAAABHRlc3QB
-----END OPENSSH PRIVATE KEY-----
"""
schemathesis.openapi.format("openssh-private-key", st.just(SSH_PRIVATE_KEY))

_counter = itertools.count()
# Keys are kept 24 hours: a second run against the same database must not
# meet the first run's.
_run = uuid.uuid4().hex[:8]
# The suite's own token: revoking it would end the run, not test anything.
_OWN_TOKEN_ID = os.environ.get("CAP_CONTRACT_TOKEN_ID", "")


def _parses_as_time(value):
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except (TypeError, ValueError):
        return False


@schemathesis.hook
def before_call(context, case, kwargs):
    # Only a request meant to be valid: editing a negative case's headers
    # would make schemathesis revalidate it and send what it left out.
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    key = (case.headers or {}).get("Idempotency-Key")
    if not negative and isinstance(key, str) and key.strip():
        case.headers["Idempotency-Key"] = f"{key.strip()[:200]}-{_run}-{next(_counter)}"
    body = case.body
    if case.operation.path == "/v1/tokens" and case.method.upper() == "POST" and isinstance(body, dict):
        at = body.get("expires_at")
        if isinstance(at, str) and _parses_as_time(at):
            when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                seconds=random.randint(3600, 80 * 86400)
            )
            body["expires_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if case.operation.path == "/v1/tokens/{id}" and (case.path_parameters or {}).get("id") == _OWN_TOKEN_ID:
        case.path_parameters["id"] = "tok_000000000000000000000000"
