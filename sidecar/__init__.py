"""mcp-auth-sidecar: an auth reverse proxy that runs beside an unmodified MCP server."""

__version__ = "0.1.0"
