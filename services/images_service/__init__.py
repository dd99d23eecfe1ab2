"""KITTY images-service: validation, queue, job views, listing and select; workers and engines beside it."""

__version__ = "0.1.0"
