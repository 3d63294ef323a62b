"""The pieces of :mod:`paceline.testing.api_server`: config, state, HTTP parsing, routes, server.

Import from :mod:`paceline.testing.api_server`; these modules are private.
"""
