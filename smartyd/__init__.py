"""smartyd: the IPTV/ISP integration daemon."""
