"""
Untrusted XML from partners (STYLE idiom 11), in one place.

Every partner answer is parsed with entities unresolved, no network, no DTD
loading and no huge trees; and a document whose DTD declares an entity or an
attribute default, or names an external DTD, is refused: libxml2 still
substitutes internal entities in attribute values with
``resolve_entities=False``, and ``get()`` answers an ATTLIST default.

An internal subset of element and attribute declarations only is accepted:
ASSIST's paysecure gateway opens every orderstate/charge/cancel answer with
``<!DOCTYPE result [<!ATTLIST result firstcode CDATA #REQUIRED ...>
<!ELEMENT order (...)> ...]>`` (as public clients' recorded answers show).
Nothing in such a subset changes what we read: ``load_dtd=False``, no
validation, and no attribute has a declared default.  (A candidate for
smartyd.partners, where every partner client would find it.)
"""

from __future__ import annotations

import re

from lxml import etree

# The declarations a harmless internal subset may hold, as libxml2 writes them
# back (one attribute per ATTLIST): element declarations, and attributes with
# no default value -- a default (``"0"``, ``#FIXED "x"``) is what lxml's
# ``get()`` answers for an attribute the element lacks.  Comments are harmless.
_HARMLESS_DECLARATION = re.compile(
    r"<!ELEMENT [^<>\"']*>|<!ATTLIST [^<>\"']*#(?:REQUIRED|IMPLIED)>|<!--(?:[^-]|-[^-])*-->"
)


def _xml_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_comments=True, remove_pis=True)


def parse_untrusted_xml(body: bytes):
    """
    The root element of a partner's XML answer, or None when it is not XML.
    A document whose DTD declares any entity (general or parameter) or an
    attribute default, or names an external DTD, is refused: libxml2
    substitutes internal entities in attribute values even with
    ``resolve_entities=False``, and lxml's ``get()`` answers a declared
    default for a missing attribute.  Element declarations and attribute
    declarations without a default are harmless and accepted (ASSIST sends them).
    """
    try:
        root = etree.fromstring(body, _xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root is None:
        return None
    tree = root.getroottree()
    docinfo = tree.docinfo
    if docinfo.system_url or docinfo.public_id:
        return None
    if docinfo.internalDTD is not None and not _harmless_subset(tree):
        return None
    return root


def _harmless_subset(tree) -> bool:
    """Whether the internal subset holds only L{_HARMLESS_DECLARATION}s (no entity, no default)."""
    text = etree.tostring(tree, encoding="unicode")
    start, end = text.find("["), text.find("]>")
    if not text.startswith("<!DOCTYPE") or start < 0 or end < start:
        return False
    return not _HARMLESS_DECLARATION.sub("", text[start + 1:end]).strip()
