"""A Twilio SMS webhook that hands customers' replies to pgnotify (CONTRACT.md §7).

Run: DATABASE_URL=postgresql://app@db/shop python examples/twilio_webhook.py (port 8000),
and set the number's "A message comes in" webhook to it. The role needs `pgnotify_client`.
Check Twilio's X-Twilio-Signature in front of it (twilio.request_validator) in production.
"""

import os
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

import psycopg

INSERT = """insert into pgnotify.inbound_messages (from_address, to_address, body, provider_id)
values (%(From)s, %(To)s, %(Body)s, %(MessageSid)s) on conflict do nothing"""


def app(environ, start_response):  # type: ignore[no-untyped-def]
    size = int(environ.get("CONTENT_LENGTH") or 0)
    form = {k: v[0] for k, v in parse_qs(environ["wsgi.input"].read(size).decode()).items()}
    fields = {k: form.get(k, "") for k in ("From", "To", "Body", "MessageSid")}
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute(INSERT, fields)  # the trigger acts on it: STOP, START, HELP, C
    start_response("200 OK", [("Content-Type", "text/xml")])
    return [b"<Response/>"]  # empty TwiML: pgnotify answers HELP itself, through the queue


if __name__ == "__main__":
    make_server("", 8000, app).serve_forever()
