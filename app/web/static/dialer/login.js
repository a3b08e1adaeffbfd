// The one-time link's landing page: open the dialer with the session token in the URL fragment (never sent
// to a server, nor in a Referer), which keeps it in memory (docs/dialer.md, "Auth model"). When the link
// answers a dialer waiting in the CRM (config.stay), this tab stays put a moment so the rep reads that.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("login-config").textContent);
  var next = config.next + "#session=" + encodeURIComponent(config.session);
  document.getElementById("open-dialer").href = next;
  window.setTimeout(function () { window.location.replace(next); }, config.stay ? 4000 : 0);
})();
