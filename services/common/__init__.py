"""What every KITTY process shares beside the wire: JSON logging with request and job ids, the
request-id, API-key and size-limit middlewares, the JSON error response, and the launcher of child
processes that the test suite and the bench use. Standard library, Starlette, httpx and
`services.contracts` only."""
