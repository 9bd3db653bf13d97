"""
The Irdeto CAS: entitlements of devices (smartcard / device ids) over SOAP.

The WSDL is vendor-supplied and not public, so the operations sit behind
one small interface, L{IrdetoPartner} (``add``, ``remove``, ``entitled``),
and this module builds the requests with lxml in OUR assumed shape (kept
honest by tests/fakes/irdeto.py); adapting to the operator's WSDL means
changing L{IrdetoClient} only.

    POST {host}/EntitlementService   SOAPAction: "urn:smartyd:irdeto/<Operation>"
    <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
      <soap:Body>
        <ird:AddEntitlement xmlns:ird="urn:smartyd:irdeto">     (RemoveEntitlement)
          <ird:DeviceId>..</ird:DeviceId><ird:ProductId>..</ird:ProductId>
          <ird:Nationality>RUS</ird:Nationality><ird:RegionTag>MO</ird:RegionTag>
        </ird:AddEntitlement>
      </soap:Body>
    </soap:Envelope>
    -> <ird:AddEntitlementResponse><ird:Result>0</ird:Result>...   (0 = done)
       or a soap:Fault (a refusal)
    GetEntitlements(DeviceId) -> <ird:ProductId>..</ird:ProductId>...
"""

from __future__ import annotations

from attrs import define
from lxml import etree

from smartyd.config import Irdeto as IrdetoConfig
from smartyd.gateways.untrusted_xml import parse_untrusted_xml
from smartyd.partners import PartnerHTTP, PartnerProtocolError, PartnerRefused

PROVIDER = "irdeto"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS = "urn:smartyd:irdeto"


def envelope(operation: str, fields: list[tuple[str, str]]) -> bytes:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "ird": NS})
    body = etree.SubElement(env, f"{{{SOAP}}}Body")
    op = etree.SubElement(body, f"{{{NS}}}{operation}")
    for name, value in fields:
        etree.SubElement(op, f"{{{NS}}}{name}").text = value
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


@define
class IrdetoClient:
    cfg: IrdetoConfig
    http: PartnerHTTP

    async def _call(self, operation: str, fields: list[tuple[str, str]]):
        response = await self.http.request(
            "POST", f"{self.cfg.host}/EntitlementService", data=envelope(operation, fields),
            headers={"Content-Type": "text/xml; charset=utf-8",
                     "SOAPAction": f'"{NS}/{operation}"'}, ok_codes=(200, 500))
        root = parse_untrusted_xml(response.body)
        if root is None or root.tag != f"{{{SOAP}}}Envelope":
            raise PartnerProtocolError(PROVIDER, f"{operation}: not a SOAP answer")
        fault = root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
        if fault is not None:
            raise PartnerRefused(PROVIDER, f"{operation}: {(fault.findtext('faultstring') or '')[:200]}")
        answer = root.find(f"{{{SOAP}}}Body/{{{NS}}}{operation}Response")
        if answer is None:
            raise PartnerProtocolError(PROVIDER, f"{operation}: no {operation}Response")
        return answer

    def _fields(self, device: str, product: int) -> list[tuple[str, str]]:
        return [("DeviceId", device), ("ProductId", str(product)),
                ("Nationality", self.cfg.nationality), ("RegionTag", self.cfg.region_tag)]

    async def change(self, add: bool, device: str, product: int) -> None:
        operation = "AddEntitlement" if add else "RemoveEntitlement"
        answer = await self._call(operation, self._fields(device, product))
        if (answer.findtext(f"{{{NS}}}Result") or "").strip() != "0":
            raise PartnerRefused(PROVIDER, f"{operation}: result {answer.findtext(f'{{{NS}}}Result')}")

    async def entitled(self, device: str) -> set[int]:
        answer = await self._call("GetEntitlements", [("DeviceId", device)])
        return {int(e.text) for e in answer.iter(f"{{{NS}}}ProductId") if (e.text or "").isdigit()}


@define
class IrdetoPartner:
    cfg: IrdetoConfig
    client: IrdetoClient
    provider: str = PROVIDER

    def desired(self, customer_id: int, tariffs: list, devices: list) -> dict:
        out = {}
        for account_id, uid in devices:
            for holder, tariff in tariffs:
                if holder is None or holder == account_id:
                    for product in self.cfg.product_ids(tariff):
                        out[(uid, f"product:{product}")] = True
        return out

    def calls(self, user_key: str, item: str, wanted: bool, known: dict) -> list[tuple]:
        product = int(item.split(":", 1)[1])
        return [("add" if wanted else "remove", {"product": product}, None)]

    async def send(self, call) -> None:
        await self.client.change(call.op == "add", call.user_key, call.args["product"])

    async def in_effect(self, call) -> bool:
        have = await self.client.entitled(call.user_key)
        return (call.args["product"] in have) == (call.op == "add")
