"""Reusable pyinfra deploys, one module per component; each keeps its defaults at the top."""
