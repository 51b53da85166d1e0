"""The MCP server: isol8 as the code-execution tool of any agent (the optional `mcp` extra).

tools (the tools, over a server's state), server (the MCPServer for stdio, and the endpoint that
`isol8 serve` mounts at `/mcp`). Nothing here imports a UI package.
"""
