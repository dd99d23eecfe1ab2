"""What every KITTY process shares beside the wire: JSON logging with request and job ids, and the
request-id middleware. Standard library and Starlette only."""
