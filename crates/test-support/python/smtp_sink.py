"""A real SMTP server for tests (aiosmtpd), run by tollgate_test_support::SmtpSink.

Usage: smtp_sink.py DIRECTORY [--tls | --implicit-tls] [--login USER:PASSWORD]
Listens on 127.0.0.1 on a free port and prints the port on the first line of
stdout. --tls requires STARTTLS, with a certificate for 127.0.0.1 and localhost
from a CA made at start (DIRECTORY/ca.pem, which clients trust); --implicit-tls
speaks TLS from the first byte instead (smtps); --login requires AUTH
(PLAIN or LOGIN, over TLS only) with that user and password. Every accepted message is written (atomically, tmp + rename) to
DIRECTORY/messages/<n>.json with its envelope, the headers tests look at and
the decoded plain-text body; the raw bytes go to DIRECTORY/maildir as well.

Fault injection, one message at a time: if DIRECTORY/fault exists when a
message reaches a stage, its first line is used once and the file removed:
  "rcpt <reply>"  answer RCPT TO with <reply> (e.g. "rcpt 550 5.1.1 no such user")
  "data <reply>"  answer the end of DATA with <reply> (e.g. "data 451 4.3.0 try later")
  "data drop"     take the message, then drop the connection before replying
                  (the client cannot know whether it was accepted)
"""

import argparse
import asyncio
import email
import email.policy
import itertools
import json
import mailbox
import os
import ssl
import subprocess

from aiosmtpd.smtp import SMTP, AuthResult


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.messages = os.path.join(directory, "messages")
        os.makedirs(self.messages, exist_ok=True)
        self.maildir = mailbox.Maildir(os.path.join(directory, "maildir"), create=True)
        self.counter = itertools.count(1)

    def take_fault(self, stage):
        path = os.path.join(self.directory, "fault")
        try:
            with open(path) as f:
                line = f.readline().strip()
        except FileNotFoundError:
            return None
        fault_stage, _, action = line.partition(" ")
        if fault_stage != stage:
            return None
        os.remove(path)
        return action

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        fault = self.take_fault("rcpt")
        if fault:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        fault = self.take_fault("data")
        if fault and fault != "drop":
            return fault
        n = next(self.counter)
        self.store(n, server, session, envelope)
        if fault == "drop":
            server.transport.abort()
            return "250 never seen"
        return f"250 2.0.0 OK: queued as SINK{n}"

    def store(self, n, server, session, envelope):
        raw = envelope.original_content
        self.maildir.add(raw)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(("plain",))
        record = {
            "tls": session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None,
            "login": session.auth_data.login.decode() if session.auth_data else None,
            "envelope_from": envelope.mail_from,
            "envelope_to": envelope.rcpt_tos,
            "from": str(message.get("From", "")),
            "to": str(message.get("To", "")),
            "subject": str(message.get("Subject", "")),
            "message_id": str(message.get("Message-ID", "")),
            "date": str(message.get("Date", "")),
            "body": body.get_content() if body is not None else "",
            "raw": raw.decode("utf-8", errors="replace"),
        }
        tmp = os.path.join(self.directory, f".{n}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.messages, f"{n:06}.json"))


def certificate(directory):
    """A throwaway CA (DIRECTORY/ca.pem, for clients to trust) and a server
    certificate it signed for 127.0.0.1 and localhost, valid for a day."""
    path = lambda name: os.path.join(directory, name)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with open(path("server.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for command in (
        ["req", "-x509", *key, "-days", "1", "-subj", "/CN=Tollgate test CA",
         "-keyout", path("ca.key"), "-out", path("ca.pem")],
        ["req", *key, "-subj", "/CN=localhost", "-keyout", path("server.key"), "-out", path("server.csr")],
        ["x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
         "-CAcreateserial", "-days", "1", "-extfile", path("server.ext"), "-out", path("server.pem")],
    ):
        subprocess.run(["openssl", *command], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(path("server.pem"), path("server.key"))
    return context


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        # Not handled here: aiosmtpd answers 235, or 535 on a refusal.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
    return check


async def main(args):
    loop = asyncio.get_running_loop()
    handler = Sink(args.directory)
    options, implicit = {}, None
    if args.tls:
        options.update(tls_context=certificate(args.directory), require_starttls=True)
    if args.implicit_tls:
        implicit = certificate(args.directory)
        # aiosmtpd counts only STARTTLS as TLS for AUTH; this channel is TLS from the start.
        options.update(auth_require_tls=False)
    if args.login:
        user, _, password = args.login.partition(":")
        options.update(authenticator=authenticator(user, password), auth_required=True)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="tollgate-test-sink", loop=loop, **options),
        "127.0.0.1", 0, ssl=implicit,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--login")
    asyncio.run(main(parser.parse_args()))
