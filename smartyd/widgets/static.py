"""
The widgets' JavaScript and style sheet: the snippet's loader script
(L{loader}) and the pages' own script and CSS (served as files, so the
content security policy needs no ``'unsafe-inline'``).  No build step.
"""

from __future__ import annotations

import json

# Runs on the operator's page.  Its base URL comes from its own src, so it
# works from another domain and through the site's own /widgets proxy.
LOADER = """\
(function () {
  var id = %(id)s, containerId = %(container)s, params = %(params)s, title = %(title)s;
  var marker = "/widgets/api/get/" + id;
  var script = document.currentScript;
  if (!script || !script.src || script.src.indexOf(marker) < 0) {
    script = null;
    var all = document.getElementsByTagName("script");
    for (var i = all.length - 1; i >= 0; i--) {
      if (all[i].src && all[i].src.indexOf(marker) >= 0) { script = all[i]; break; }
    }
  }
  if (!script) { return; }
  var src = script.src;
  var base = src.slice(0, src.indexOf(marker));
  var origin = (base.match(/^https?:\\/\\/[^\\/]+/) || [window.location.origin])[0];
  var query = [];
  for (var k in params) {
    if (Object.prototype.hasOwnProperty.call(params, k)) {
      query.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
    }
  }
  var frame = document.createElement("iframe");
  frame.src = base + "/widgets/page/" + id + (query.length ? "?" + query.join("&") : "");
  frame.title = title;
  frame.setAttribute("scrolling", "no");
  frame.style.border = "0";
  frame.style.width = "100%%";
  frame.style.height = "150px";
  window.addEventListener("message", function (e) {
    if (e.source !== frame.contentWindow || e.origin !== origin) { return; }
    var d = e.data;
    if (d && d.smartydWidget === id && typeof d.height === "number") {
      frame.style.height = Math.ceil(d.height) + "px";
    }
  });
  function place() {
    var box = document.getElementById(containerId);
    if (!box) { return; }
    while (box.firstChild) { box.removeChild(box.firstChild); }
    box.appendChild(frame);
  }
  if (document.getElementById(containerId)) { place(); }
  else { document.addEventListener("DOMContentLoaded", place); }
})();
"""


def js_value(value) -> str:
    """A JSON value safe inside a script (no ``</script>``, no line separators)."""
    return (json.dumps(value, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def loader(widget_id: int, container: str, params: dict[str, str], title: str) -> bytes:
    return (LOADER % {"id": js_value(widget_id), "container": js_value(container),
                      "params": js_value(params), "title": js_value(title)}).encode("utf-8")


# In the iframe: tell the loader the page's height, whenever it changes.
PAGE_JS = b"""\
(function () {
  var id = Number(document.documentElement.getAttribute("data-widget"));
  function report() {
    if (window.parent === window) { return; }
    // The document's own height (scrollHeight never shrinks below the frame's).
    var h = document.documentElement.getBoundingClientRect().height;
    window.parent.postMessage({smartydWidget: id, height: h}, "*");
  }
  window.addEventListener("load", report);
  if (window.ResizeObserver) { new ResizeObserver(report).observe(document.body); }
  report();
})();
"""

PAGE_CSS = b"""\
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 0; padding: 12px 14px; background: #fff; }
h1 { font-size: 19px; margin: 0 0 10px; }
h2 { font-size: 16px; margin: 14px 0 6px; }
.tariff { border: 1px solid #dfe3ea; border-radius: 8px; padding: 10px 12px; margin: 0 0 10px; }
.tariff h2 { margin: 0 0 2px; }
.price { color: #5b6474; font-size: 13px; margin: 0 0 6px; }
ul.channels { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 6px; }
ul.channels li { background: #eef3fb; border-radius: 5px; padding: 2px 8px; font-size: 13px; }
form { display: grid; gap: 8px; max-width: 380px; }
label { display: grid; gap: 3px; font-size: 13px; color: #3a4252; }
input, select { font: inherit; padding: 6px 8px; border: 1px solid #c5ccd8; border-radius: 6px; }
button { font: inherit; padding: 7px 14px; border: 0; border-radius: 6px; background: #2563eb;
         color: #fff; cursor: pointer; justify-self: start; }
button.secondary { background: #e5e9f0; color: #1d2330; }
.message { padding: 8px 10px; border-radius: 6px; background: #fdecec; color: #8a1f1f; }
.notice { padding: 8px 10px; border-radius: 6px; background: #e8f6ec; color: #1c5b2e; }
.credentials { font: 15px/1.6 ui-monospace, monospace; background: #f5f7fa; padding: 8px 10px;
               border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
td, th { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eceff4; }
.onair { font-weight: 600; }
.onair .badge { background: #e11d48; color: #fff; border-radius: 4px; padding: 0 5px;
                font-size: 11px; margin-left: 6px; }
.inline { display: inline; }
"""
