#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) on 127.0.0.1 for the email plugin's host tests.

Usage: server.py OUTDIR [--tls] [--auth USER:PASSWORD] [--reject ADDRESS]...

It listens on a free port of 127.0.0.1 and prints that port on stdout, one line, once it
accepts connections. Every message it accepts is written to OUTDIR/message-N.json: the
envelope (mail_from, rcpt_tos), the raw message text, what Python's e-mail parser makes of
it (headers decoded, the age of its Date, each MIME part's type and decoded text) and the
session (TLS on? logged-in user). With --tls it generates a private CA and a server certificate for
127.0.0.1/localhost with openssl into OUTDIR/tls/ (the client trusts OUTDIR/tls/ca.pem) and
offers STARTTLS. With --auth it offers AUTH PLAIN/LOGIN (after STARTTLS only, when --tls)
and accepts only that login. Each --reject ADDRESS is refused at RCPT TO with a 550.
The server stops when its stdin closes (so it dies with the test that started it).
"""

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings
import time
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
except ImportError:
    sys.stderr.write(
        "aiosmtpd is not installed: install it with `python3 -m pip install aiosmtpd` "
        "(the email plugin's host tests run a real SMTP server)\n"
    )
    sys.exit(3)


# aiosmtpd warns about its own deprecated Session.login_data when a login succeeds.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def openssl(*args):
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    except FileNotFoundError:
        sys.stderr.write("openssl is not installed: install it (apt-get install openssl) for the STARTTLS tests\n")
        sys.exit(4)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(f"openssl {' '.join(args)} failed: {e.stderr.decode(errors='replace')}\n")
        sys.exit(4)


def make_certificates(directory):
    """A private CA and a server certificate signed by it, for 127.0.0.1 and localhost."""
    os.makedirs(directory, exist_ok=True)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "2",
            "-subj", "/CN=Chengis test CA")
    openssl("req", *ec, "-keyout", path("server.key"), "-out", path("server.csr"), "-subj", "/CN=localhost")
    with open(path("server.ext"), "w") as ext:
        ext.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                  "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
            "-CAcreateserial", "-out", path("server.pem"), "-days", "2", "-extfile", path("server.ext"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path("server.pem"), path("server.key"))
    return context


def parsed(raw):
    """What a mail reader sees: decoded headers and each part's type and text."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    parts = []
    for part in message.walk():
        if part.is_multipart():
            continue
        parts.append({
            "content_type": part.get_content_type(),
            "charset": part.get_content_charset(),
            "transfer_encoding": part.get("Content-Transfer-Encoding"),
            "text": part.get_content(),
        })
    date = message.get("Date")
    return {
        "headers": {name: str(value) for name, value in message.items()},
        "date_age_seconds": time.time() - parsedate_to_datetime(str(date)).timestamp() if date else None,
        "content_type": message.get_content_type(),
        "defects": [repr(d) for d in message.defects],
        "parts": parts,
    }


class Recorder:
    def __init__(self, outdir, reject):
        self.outdir = outdir
        self.reject = {address.lower() for address in reject}
        self.count = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        with self.lock:
            self.count += 1
            name = os.path.join(self.outdir, f"message-{self.count}.json")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "raw": raw.decode("utf-8", errors="replace"),
            "parsed": parsed(raw),
            "tls": session.ssl is not None,
            "login": login_of(session),
        }
        with open(name + ".tmp", "w") as out:
            json.dump(record, out, indent=1)
        os.rename(name + ".tmp", name)
        return f"250 2.0.0 OK: queued as M{self.count}"


def login_of(session):
    """The user name the session logged in as, if it did."""
    data = getattr(session, "auth_data", None)
    login = getattr(data, "login", None)
    return login.decode() if isinstance(login, bytes) else None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--auth")
    parser.add_argument("--reject", action="append", default=[])
    args = parser.parse_args()
    os.makedirs(args.outdir, exist_ok=True)

    options = {}
    if args.tls:
        options["tls_context"] = make_certificates(os.path.join(args.outdir, "tls"))
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == user.encode() and auth_data.password == password.encode()
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

        options.update(authenticator=authenticator, auth_required=True, auth_require_tls=args.tls)
    else:
        options["auth_require_tls"] = False

    controller = Controller(Recorder(args.outdir, args.reject), hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    print(controller.port, flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
