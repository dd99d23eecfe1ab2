"""`kitty-mcp`: the images API as MCP tools, so an assistant can generate, list and select images.

It is an HTTP client of the gateway (like `kitty-cli`), so keys, quotas and ownership are enforced
where they are for every other client; nothing here touches Redis or the store."""
