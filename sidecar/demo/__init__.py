"""The quickstart behind ``make run``: example MCP server, local token issuer, sidecar. Nothing to set up."""
