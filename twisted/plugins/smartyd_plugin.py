from twisted.application.service import ServiceMaker

smartyd = ServiceMaker(
    "smartyd",
    "smartyd.tap",
    "IPTV/ISP integration daemon: stream tokens, OSMP payments, gateways, billing",
    "smartyd",
)
