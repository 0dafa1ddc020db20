"""A real SMTP server for tests (aiosmtpd), run by tollgate_test_support::SmtpSink.

Usage: smtp_sink.py DIRECTORY
Listens on 127.0.0.1 on a free port and prints the port on the first line of
stdout. Every accepted message is written (atomically, tmp + rename) to
DIRECTORY/messages/<n>.json with its envelope, the headers tests look at and
the decoded plain-text body; the raw bytes go to DIRECTORY/maildir as well.

Fault injection, one message at a time: if DIRECTORY/fault exists when a
message reaches a stage, its first line is used once and the file removed:
  "rcpt <reply>"  answer RCPT TO with <reply> (e.g. "rcpt 550 5.1.1 no such user")
  "data <reply>"  answer the end of DATA with <reply> (e.g. "data 451 4.3.0 try later")
  "data drop"     take the message, then drop the connection before replying
                  (the client cannot know whether it was accepted)
"""

import asyncio
import email
import email.policy
import itertools
import json
import mailbox
import os
import sys

from aiosmtpd.smtp import SMTP


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
        self.store(n, envelope)
        if fault == "drop":
            server.transport.abort()
            return "250 never seen"
        return f"250 2.0.0 OK: queued as SINK{n}"

    def store(self, n, envelope):
        raw = envelope.original_content
        self.maildir.add(raw)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(("plain",))
        record = {
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


async def main(directory):
    loop = asyncio.get_running_loop()
    handler = Sink(directory)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="tollgate-test-sink", loop=loop), "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
