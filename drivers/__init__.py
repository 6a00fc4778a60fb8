"""Protocol drivers; each registers itself with gateway.registry."""
