"""kitty-cli: the images API from a terminal, through the gateway (imports only ``services.contracts``)."""

__version__ = "0.1.0"
