"""
Untrusted XML from partners (STYLE idiom 11), in one place.

Every partner answer is parsed with entities unresolved, no network, no DTD
loading and no huge trees; and a document that carries a DTD at all is
refused: no partner answer needs one, and libxml2 still substitutes internal
entities in attribute values with ``resolve_entities=False``.  (A candidate
for smartyd.partners, where every partner client would find it.)
"""

from __future__ import annotations

from lxml import etree


def _xml_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_comments=True, remove_pis=True)


def parse_untrusted_xml(body: bytes):
    """
    The root element of a partner's XML answer, or None when it is not XML.
    A document with a DTD is refused outright: no partner answer needs one,
    and libxml2 substitutes internal entities in attribute values even with
    ``resolve_entities=False``.
    """
    try:
        root = etree.fromstring(body, _xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root is None:
        return None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        return None
    return root
