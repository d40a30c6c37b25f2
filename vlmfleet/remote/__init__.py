"""Scripts the deploy installs on hosts (stdlib only, run by the host's python3 or the tools virtualenv)."""
