"""mcp-ha: switchover and failover of the tier's primary (docs/failover.md)."""
