/* iotrust dashboard: the live event stream (polls /ui/events/feed every 2 s). No framework.
   Every value is put in the page with textContent, never as HTML. */
"use strict";
(function () {
  var rows = document.getElementById("event-rows");
  if (!rows) { return; }
  var status = document.getElementById("feed-status");
  var last = Number(rows.getAttribute("data-last") || "0");
  var refusals = rows.getAttribute("data-refusals") === "1";
  var KEEP = 500;

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }

  function row(e) {
    var tr = document.createElement("tr");
    if (e.refusal) { tr.className = "refusal"; }
    cell(tr, e.seq);
    cell(tr, e.at);
    cell(tr, e.kind);
    var device = cell(tr, "");
    if (e.device_id) {
      var a = document.createElement("a");
      a.href = "/ui/devices/" + encodeURIComponent(e.device_id);
      a.textContent = e.device_id;
      device.appendChild(a);
    }
    cell(tr, e.actor);
    cell(tr, e.reason, e.refusal ? "reason" : "");
    cell(tr, e.data, "data");
    return tr;
  }

  function poll() {
    var url = "/ui/events/feed?after=" + last + (refusals ? "&refusals=true" : "");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/ui/login?next=" + encodeURIComponent(
            window.location.pathname + window.location.search));
          throw new Error("signed out");
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (body) {
        body.events.forEach(function (e) { rows.insertBefore(row(e), rows.firstChild); });
        while (rows.rows.length > KEEP) { rows.deleteRow(rows.rows.length - 1); }
        last = body.last;
        status.textContent = "live: up to event " + last;
      })
      .catch(function (err) { status.textContent = "feed paused (" + err.message + "), retrying"; })
      .finally(function () { window.setTimeout(poll, 2000); });
  }

  window.setTimeout(poll, 2000);
}());
