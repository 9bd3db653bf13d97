"""
Smarty's TV Middleware API (``/tvmiddleware/api/<method>/``): the interface
set-top boxes, Smart TVs and apps use to log in, list channels, zap, read the
guide, browse films and manage their subscription.

The public specification is Smarty's apidoc (``smarty-tvmw-api-docs/
api_data.json``, version 1.40.0).  Method names, parameter names, answer
fields and error numbers are the spec's.

Layout:
  - ``errors``: L{TvmwError}, the one exception a method raises to answer an
    error code.
  - ``call``: L{Session} (who is calling) and L{Call} (what a method gets).
  - methods are plain ``async def method(call: Call) -> dict`` functions,
    grouped by the spec's groups, each module exporting ``METHODS``:
    ``{"<spec url without slashes at the ends>": function}``.
  - the wire (JSON or XML, cookies, redirects) lives at the edge, in ``web``.
"""
