"""
What every server-rendered surface (the widgets, the console) sends with a
page: the content security policy, the cookie flags and the HTML headers,
and the flattening of a ``twisted.web.template`` document (which escapes
every string it is given); and the redirect to a path of ours.  The one
copy of each (STYLE.md, "Web surfaces"); CSRF tokens are L{smartyd.http.csrf}.
"""

from __future__ import annotations

from twisted.web.server import Request
from twisted.web.template import Tag, flattenString


def csp(form_action: tuple[str, ...] = (), frame_ancestors: tuple[str, ...] = ()) -> bytes:
    """
    Scripts, styles and images from us only (no inline script), forms posted
    to us (and ``form_action``), framed by ``frame_ancestors`` only (none: never).
    """
    actions = " ".join(("'self'",) + tuple(a for a in form_action if a))
    ancestors = " ".join(frame_ancestors) or "'none'"
    return (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
            f" form-action {actions}; frame-ancestors {ancestors}; base-uri 'none'"
            ).encode("ascii")


def set_cookie(request: Request, name: bytes, value: str, *, same_site: str, secure: bool,
               max_age: int | None = None, path: str = "/", partitioned: bool = False) -> None:
    """
    A ``Set-Cookie`` that is ``HttpOnly`` always; ``max_age`` 0 deletes it.
    ``partitioned`` (with ``secure``): kept per top-level site (CHIPS), the
    cookie of a frame on another site where third-party cookies are blocked.
    """
    flags = [f"Path={path}", "HttpOnly", f"SameSite={same_site}"]
    if max_age is not None:
        flags.append(f"Max-Age={max_age}")
    if secure:
        flags.append("Secure")
        if partitioned:
            flags.append("Partitioned")
    # Request.addCookie cannot say SameSite: the Set-Cookie value is queued as is.
    request.cookies.append(name + b"=" + value.encode("ascii") + b"; "
                           + "; ".join(flags).encode("ascii"))


def arg(request: Request, name: str, limit: int) -> str:
    """A form's or query's field as text (at most ``limit`` characters, stripped); "" if absent."""
    raw = (request.args.get(name.encode()) or [b""])[0]
    try:
        return raw.decode("utf-8")[:limit].strip()
    except UnicodeDecodeError:
        return ""


def cookie(request: Request, name: bytes) -> str | None:
    raw = request.getCookie(name)
    try:
        return raw.decode("ascii") if raw else None
    except UnicodeDecodeError:
        return None


async def html_page(request: Request, status: int, document: Tag, policy: bytes,
                    framed: bool = False) -> bytes:
    """
    The document, escaped by the flattener, with the headers every page has;
    ``framed``: a page other sites may frame (the policy's ``frame-ancestors``
    says which), else never framed (``X-Frame-Options: DENY`` too).
    """
    html = await flattenString(None, document)
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    if not framed:
        request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"same-origin")
    request.setHeader(b"content-security-policy", policy)
    return b"<!DOCTYPE html>\n" + html


def redirect(request: Request, location: str) -> bytes:
    """A 303 to a path of ours (callers pass a path, never a URL taken from the request)."""
    if not location.startswith("/") or location.startswith("//") or "\\" in location:
        location = "/"
    request.setResponseCode(303)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"cache-control", b"no-store")
    return b""
