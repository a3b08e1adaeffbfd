// The one-time link's landing page: keep the session token for this tab (sessionStorage), then open the
// dialer, which sends it as `Authorization: Rep <token>` (docs/dialer.md, "Auth model").
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("login-config").textContent);
  try {
    window.sessionStorage.setItem("sb_rep_token", config.session);
  } catch (e) {
    // Storage blocked (a third-party iframe in some browsers): the sb_rep cookie + CSRF nonce still work.
  }
  window.location.replace(config.next);
})();
