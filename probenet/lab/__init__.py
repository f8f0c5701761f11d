"""A probenet fleet on one machine, for the demo and the end-to-end tests.

Modules: `fleet` (a real collector and agents as child processes, from generated configs,
each agent on its own loopback source address), `targets` (HTTP/TCP/DNS servers that fail
by the address a request comes from), `client` and `snapshot` (the collector's HTTP API,
validated), `errors` (the exception tree).
"""
