"""A Twilio SMS webhook that hands customers' replies to pgnotify (CONTRACT.md §7).

Run: DATABASE_URL=postgresql://app@db/shop TWILIO_AUTH_TOKEN=… WEBHOOK_URL=https://…/sms
python examples/twilio_webhook.py (127.0.0.1:8000, behind your TLS proxy), and set the
number's "A message comes in" webhook to WEBHOOK_URL. The role needs `pgnotify_client`.
A request without Twilio's valid X-Twilio-Signature, or without a MessageSid, is refused:
anyone could otherwise post STOP or C for any number.
"""

import os
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

import psycopg
from twilio.request_validator import RequestValidator

INSERT = """insert into pgnotify.inbound_messages (from_address, to_address, body, provider_id)
values (%(From)s, %(To)s, %(Body)s, %(MessageSid)s) on conflict do nothing"""


def app(environ, start_response):  # type: ignore[no-untyped-def]
    size = int(environ.get("CONTENT_LENGTH") or 0)
    form = {k: v[0] for k, v in parse_qs(environ["wsgi.input"].read(size).decode()).items()}
    signature = environ.get("HTTP_X_TWILIO_SIGNATURE", "")
    validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
    if not form.get("MessageSid") or not validator.validate(
        os.environ["WEBHOOK_URL"], form, signature
    ):
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"forbidden"]
    fields = {k: form.get(k, "") for k in ("From", "To", "Body", "MessageSid")}
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute(INSERT, fields)  # the trigger acts on it: STOP, START, HELP, C
    start_response("200 OK", [("Content-Type", "text/xml")])
    return [b"<Response/>"]  # empty TwiML: pgnotify answers HELP itself, through the queue


if __name__ == "__main__":
    make_server("127.0.0.1", 8000, app).serve_forever()
