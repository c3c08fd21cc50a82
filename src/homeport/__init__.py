"""Homeport: open, self-hostable, secure remote access to Home Assistant."""

__version__ = "0.1.0"
