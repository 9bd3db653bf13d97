"""
The HTTP layer every endpoint shares: the root and site (L{root}), client
addresses (L{addresses}), request fields and L{BadRequest} (L{fields}),
authentication (L{auth}), the one error handler and request counter
(L{handlers}), and ``/health`` + ``/metrics`` (L{health}).
"""
