"""The gateway: KITTY's public HTTP surface (the `/api/images/*` proxy and the `/vision` gallery).

It talks to the images-service over HTTP and imports nothing of ours but ``services.contracts``.
"""

__version__ = "0.1.0"
