"""
A fake Irdeto entitlement SOAP service (Klein, in-process) in the shape
smartyd/vod/irdeto.py documents: AddEntitlement, RemoveEntitlement,
GetEntitlements; a soap:Fault for an unknown operation or a wrong region.
"""

from __future__ import annotations

from klein import Klein
from lxml import etree

from smartyd.vod.irdeto import NS, SOAP


class FakeIrdeto:
    app = Klein()

    def __init__(self, nationality: str = "RUS", region_tag: str = "MO"):
        self.nationality, self.region_tag = nationality, region_tag
        self.entitlements: dict[str, set[int]] = {}
        self.calls: list[tuple] = []

    def resource(self):
        return self.app.resource()

    def _answer(self, request, operation: str, children: list[tuple[str, str]]) -> bytes:
        env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "ird": NS})
        body = etree.SubElement(env, f"{{{SOAP}}}Body")
        op = etree.SubElement(body, f"{{{NS}}}{operation}Response")
        for name, value in children:
            etree.SubElement(op, f"{{{NS}}}{name}").text = value
        data = etree.tostring(env, xml_declaration=True, encoding="utf-8")
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        request.setHeader(b"content-length", str(len(data)).encode())
        return data

    def _fault(self, request, text: str) -> bytes:
        env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
        fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Body"), f"{{{SOAP}}}Fault")
        etree.SubElement(fault, "faultcode").text = "soap:Client"
        etree.SubElement(fault, "faultstring").text = text
        data = etree.tostring(env, xml_declaration=True, encoding="utf-8")
        request.setResponseCode(500)
        request.setHeader(b"content-length", str(len(data)).encode())
        return data

    @app.route("/EntitlementService", methods=["POST"])
    def service(self, request):
        root = etree.fromstring(request.content.read())
        op = root.find(f"{{{SOAP}}}Body")[0]
        name = etree.QName(op).localname
        field = lambda n: op.findtext(f"{{{NS}}}{n}")  # noqa: E731
        device = field("DeviceId")
        if name == "GetEntitlements":
            return self._answer(request, name, [("ProductId", str(p)) for p in
                                                sorted(self.entitlements.get(device, ()))])
        if name not in ("AddEntitlement", "RemoveEntitlement"):
            return self._fault(request, f"unknown operation {name}")
        if field("Nationality") != self.nationality or field("RegionTag") != self.region_tag:
            return self._fault(request, "bad region")
        product = int(field("ProductId"))
        self.calls.append((name, device, product))
        if name == "AddEntitlement":
            self.entitlements.setdefault(device, set()).add(product)
        else:
            self.entitlements.get(device, set()).discard(product)
        return self._answer(request, name, [("Result", "0")])
