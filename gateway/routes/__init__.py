"""Thin route handlers: decode → call the ModelManager → encode."""
