"""Dynamic providers: a pure `diff` per resource, side effects in `mldeploy.providers.clients`.

Providers are pickled into the state by reference, so they live here, in an
importable package, and hold no clients, sockets or secrets.
"""
