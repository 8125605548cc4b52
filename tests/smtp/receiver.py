"""A real SMTP server for tests/it/email.rs: aiosmtpd (PyPI, pinned in
scripts/setup.sh) with STARTTLS required and AUTH PLAIN/LOGIN required
after it. Each accepted message is written to OUT_DIR as N.eml, with N.json
beside it (TLS, who authenticated, the recipients). The first FAIL_FIRST
messages are answered 451 (try again later), to show the retries.

usage: receiver.py CERT KEY PORT OUT_DIR USER PASSWORD FAIL_FIRST [plain]
With "plain" it offers no STARTTLS (and so no AUTH) at all.
Prints "ready" once it listens.
"""

import asyncio
import json
import logging
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# aiosmtpd 1.4 sets its own deprecated Session.login_data and logs a
# warning about it on every login.
logging.getLogger("mail.log").setLevel(logging.ERROR)

cert, key, port, out_dir, user, password, fail_first = sys.argv[1:8]
plain = sys.argv[8:] == ["plain"]


class Handler:
    def __init__(self):
        self.fail_left = int(fail_first)

    async def handle_DATA(self, server, session, envelope):
        if self.fail_left > 0:
            self.fail_left -= 1
            return "451 4.3.0 try again later"
        n = len([f for f in os.listdir(out_dir) if f.endswith(".eml")])
        with open(os.path.join(out_dir, f"{n}.json"), "w") as meta:
            json.dump(
                {
                    "tls": session.ssl is not None,
                    "login": session.auth_data.login.decode()
                    if session.authenticated
                    else None,
                    "rcpt": envelope.rcpt_tos,
                },
                meta,
            )
        with open(os.path.join(out_dir, f"{n}.eml"), "wb") as mail:
            mail.write(envelope.original_content)
        return "250 2.0.0 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
if plain:
    controller = Controller(Handler(), hostname="127.0.0.1", port=int(port))
else:
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
        auth_exclude_mechanism=["CRAM-MD5"],
    )
controller.start()
print("ready", flush=True)
try:
    asyncio.new_event_loop().run_forever()
finally:
    controller.stop()
