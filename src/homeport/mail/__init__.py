"""Outgoing mail: SMTP settings, the sender, and the templated messages the relay sends."""
