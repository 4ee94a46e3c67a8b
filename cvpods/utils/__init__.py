"""Utilities: distributed communication, logging, events, environment."""
