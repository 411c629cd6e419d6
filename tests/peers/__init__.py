"""Network peers for tests: a real SMTP server and a Twilio-shaped HTTP server."""
