// The rep's dialer: sign-in, call state, dial pad, texts, disposition, recent calls, inbound screen pop.
// It speaks only to Switchboard's /api/v1 dialer routes (docs/dialer.md). crm.js plugs the CRM in
// (HubSpot's Calling Extensions SDK or Salesforce Open CTI) through Dialer.adapter's hooks.
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("dialer-config").textContent);
  var TOKEN_KEY = "sb_rep_token";
  var CALL_POLL_MS = 1000;
  var EVENTS_POLL_MS = 2000;
  var TERMINAL = { ended: true, failed: true };
  var LABELS = {
    idle: "Ready",
    placing: "Placing the call…",
    ringing_rep: "Ringing your phone…",
    connecting: "Connecting…",
    live: "Live",
    ended: "Call ended",
    failed: "Call failed",
  };

  var $ = function (id) { return document.getElementById(id); };
  var noop = function () {};
  var state = {
    me: null, call: null, liveSince: null, cursor: null, eventsTimer: null, callTimer: null, loginTimer: null,
  };

  var Dialer = {
    config: config,
    state: state,
    // Hooks the CRM adapter replaces (crm.js): each gets the API's call object.
    adapter: {
      signedIn: noop, signedOut: noop, placed: noop, changed: noop, ended: noop, completed: noop,
      incoming: noop,
    },
  };

  // ---- session: the token from the one-time link, kept in memory (and in sessionStorage where the browser
  // allows it: a third-party iframe may not), else the sb_rep cookie + its CSRF nonce ----------------------
  var memory = null;
  var LOGIN_WAIT_MS = 2000;
  var LOGIN_WAIT_FOR_MS = 15 * 60 * 1000; // as long as the link lives

  function keep(t) {
    memory = t;
    try { window.sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* storage blocked: memory only */ }
  }

  function token() {
    if (memory) { return memory; }
    try { return window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function forget() {
    memory = null;
    try { window.sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage blocked */ }
    config.csrf = null;
  }

  // The landing page of a link hands the token over in the fragment: keep it, and drop it from the URL.
  (function fromFragment() {
    var m = /^#session=([^&]+)/.exec(window.location.hash || "");
    if (!m) { return; }
    keep(decodeURIComponent(m[1]));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  })();

  function api(method, path, body) {
    var headers = { Accept: "application/json" };
    var t = token();
    if (t) {
      headers.Authorization = "Rep " + t;
    } else if (config.csrf && method !== "GET") {
      headers["X-CSRF-Token"] = config.csrf;
    }
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(config.api + path, init).then(function (r) {
      return r.text().then(function (text) {
        var data = {};
        try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { error: "unexpected answer" }; }
        if (r.status === 401) { memory = null; signedOut(); }
        return { status: r.status, ok: r.ok, data: data };
      });
    });
  }
  Dialer.api = api;

  // ---- sign-in ------------------------------------------------------------------------------------------
  function signedOut() {
    if (state.me === null && !$("login").hidden) { return; }
    state.me = null;
    stopPolling();
    try { window.sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage blocked */ }
    $("app").hidden = true;
    $("logout").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    Dialer.adapter.signedOut();
  }

  function start() {
    api("GET", "/rep/me").then(function (r) {
      if (!r.ok) { signedOut(); return; }
      window.clearTimeout(state.loginTimer);
      state.me = r.data;
      $("login").hidden = true;
      $("app").hidden = false;
      $("logout").hidden = false;
      $("who").textContent = r.data.user.name;
      loadOutcomes();
      loadRecent();
      pollEvents();
      Dialer.adapter.signedIn(r.data);
    });
  }
  Dialer.start = start;

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    }).then(function (r) {
      return r.json().then(function (data) { return { status: r.status, data: data }; });
    });
  }

  // The link is opened in another tab (the mail): wait here for the session it makes (the wait secret).
  function awaitLink(wait, since) {
    window.clearTimeout(state.loginTimer);
    if (Date.now() - since > LOGIN_WAIT_FOR_MS) { return; }
    state.loginTimer = window.setTimeout(function () {
      post(config.login + "/wait", { wait: wait }).then(function (r) {
        if (r.status === 200 && r.data.session) { keep(r.data.session); start(); return; }
        if (r.status === 202 || r.status >= 500) { awaitLink(wait, since); }
      }, function () { awaitLink(wait, since); });
    }, LOGIN_WAIT_MS);
  }

  $("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    error("login-error", "");
    post(config.login, { email: $("login-email").value }).then(function (r) {
      if (r.status !== 202) { error("login-error", r.data.error || "Try again (" + r.status + ")"); return; }
      $("login-code").textContent = r.data.code;
      $("login-sent").hidden = false;
      awaitLink(r.data.wait, Date.now());
    });
  });
  $("login-retry").addEventListener("click", function () { window.location.reload(); });
  $("logout").addEventListener("click", function () { forget(); signedOut(); });

  // ---- placing a call and following its state ------------------------------------------------------------
  function show(callState, call) {
    var box = $("call");
    box.dataset.state = callState;
    $("call-state").textContent = LABELS[callState] || callState;
    $("hangup").hidden = !(call && !TERMINAL[callState] && callState !== "placing");
    $("call-button").disabled = !!(call && !TERMINAL[callState]);
    if (call) {
      var name = call.contact && call.contact.name ? call.contact.name : "";
      var digits = function (x) { return String(x || "").replace(/\D/g, ""); };
      $("call-contact").textContent = name;
      // A contact named after its number (an unknown caller) shows the number once.
      $("call-number").textContent = name && digits(name) === digits(call.to) ? "" : (call.to || "");
    }
  }

  function error(id, message) {
    var el = $(id);
    el.textContent = message || "";
    el.hidden = !message;
  }

  function dial(number, context) {
    number = String(number || "").trim();
    if (!number || (state.call && !TERMINAL[state.call.state])) { return Promise.resolve(null); }
    context = context || {};
    $("number").value = number;
    error("call-error", "");
    $("disposition").hidden = true;
    $("disposition-saved").hidden = true;
    $("notes").value = "";
    show("placing", null);
    var body = { to: number };
    if (context.contactId) { body.contact_id = String(context.contactId); }
    loadConversation(number);
    return api("POST", "/calls", body).then(function (r) {
      if (!r.ok) {
        show("idle", null);
        error("call-error", r.data.error || "The call could not be placed (" + r.status + ")");
        return null;
      }
      state.call = r.data;
      state.liveSince = null;
      show(r.data.state, r.data);
      Dialer.adapter.placed(r.data, context);
      follow();
      return r.data;
    });
  }
  Dialer.dial = dial;

  function follow() {
    window.clearTimeout(state.callTimer);
    var call = state.call;
    if (!call || TERMINAL[call.state]) { return; }
    state.callTimer = window.setTimeout(function () {
      api("GET", "/calls/" + call.id).then(function (r) {
        if (r.ok && state.call && state.call.id === call.id) { update(r.data); }
        follow();
      });
    }, CALL_POLL_MS);
  }

  function update(fresh) {
    var before = state.call;
    state.call = Object.assign({}, before, fresh);
    if (fresh.state === before.state) { tick(); return; }
    if (fresh.state === "live") { state.liveSince = Date.now(); }
    show(fresh.state, state.call);
    Dialer.adapter.changed(state.call, before.state);
    if (TERMINAL[fresh.state]) {
      tick();
      Dialer.adapter.ended(state.call);
      $("disposition").hidden = false;
      loadRecent();
    }
  }
  Dialer.update = update;

  function tick() {
    var call = state.call;
    var secs = null;
    if (call && TERMINAL[call.state]) {
      secs = typeof call.duration === "number" ? call.duration : null; // Twilio's talk time, once ended
    } else if (state.liveSince) {
      secs = Math.floor((Date.now() - state.liveSince) / 1000);
    }
    $("call-timer").textContent = secs === null ? "" :
      Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0");
  }

  function hangUp() {
    var call = state.call;
    if (!call || TERMINAL[call.state]) { return Promise.resolve(); }
    return api("DELETE", "/calls/" + call.id).then(function (r) {
      if (!r.ok) { error("call-error", r.data.error || "Could not hang up (" + r.status + ")"); }
    });
  }
  Dialer.hangUp = hangUp;

  $("hangup").addEventListener("click", hangUp);
  $("dial-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    dial($("number").value, {});
  });
  $("pad").addEventListener("click", function (ev) {
    var key = ev.target && ev.target.dataset && ev.target.dataset.key;
    if (key) { $("number").value += key; }
  });
  $("number").addEventListener("change", function () { loadConversation($("number").value); });

  // ---- disposition --------------------------------------------------------------------------------------
  function loadOutcomes() {
    api("GET", "/dispositions").then(function (r) {
      if (!r.ok) { return; }
      var select = $("outcome");
      select.textContent = "";
      (r.data.outcomes || []).forEach(function (o) {
        var opt = document.createElement("option");
        opt.value = o.id;
        opt.textContent = o.label;
        select.appendChild(opt);
      });
    });
  }

  $("disposition").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var call = state.call;
    if (!call) { return; }
    var body = { outcome: $("outcome").value, notes: $("notes").value };
    api("POST", "/calls/" + call.id + "/disposition", body).then(function (r) {
      if (!r.ok) { error("call-error", r.data.error || "Could not save (" + r.status + ")"); return; }
      $("disposition-saved").hidden = false; // saving again updates the same CRM record
      $("call").dataset.state = "saved";
      Dialer.adapter.completed(call, body);
      loadRecent();
    });
  });

  // ---- texts --------------------------------------------------------------------------------------------
  function loadConversation(phone) {
    phone = String(phone || "").trim();
    var list = $("conversation");
    if (!phone) { list.textContent = ""; return; }
    api("GET", "/conversation?phone=" + encodeURIComponent(phone)).then(function (r) {
      list.textContent = "";
      if (!r.ok) { return; }
      (r.data.messages || []).forEach(function (m) {
        var li = document.createElement("li");
        li.className = m.direction === "inbound" ? "in" : "out";
        li.textContent = m.body;
        li.title = (m.at || "") + (m.status ? " · " + m.status : "");
        list.appendChild(li);
      });
    });
  }
  Dialer.loadConversation = loadConversation;

  $("sms-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var to = $("number").value.trim();
    var body = $("sms-body").value;
    error("sms-error", "");
    if (!to) { error("sms-error", "Enter a number first"); return; }
    api("POST", "/messages", { to: to, body: body }).then(function (r) {
      if (!r.ok) { error("sms-error", r.data.error || "The text was not sent (" + r.status + ")"); return; }
      $("sms-body").value = "";
      loadConversation(to);
    });
  });

  // ---- recent calls -------------------------------------------------------------------------------------
  function loadRecent() {
    api("GET", "/calls?limit=20").then(function (r) {
      if (!r.ok) { return; }
      var list = $("recent");
      list.textContent = "";
      if (!(r.data.calls || []).length) {
        var none = document.createElement("li");
        none.className = "muted";
        none.textContent = "No calls yet";
        list.appendChild(none);
      }
      (r.data.calls || []).forEach(function (c) {
        var li = document.createElement("li");
        var party = c.direction === "inbound" ? c.from : c.to;
        var button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.textContent = (c.direction === "inbound" ? "← " : "→ ") + (c.contact ? c.contact.name : party);
        button.addEventListener("click", function () {
          $("number").value = party;
          loadConversation(party);
        });
        var meta = document.createElement("span");
        meta.className = "muted";
        meta.textContent = " " + (c.outcome_label || c.outcome || c.state || "") + " · " +
          (c.started_at ? new Date(c.started_at).toLocaleString() : "");
        li.appendChild(button);
        li.appendChild(meta);
        list.appendChild(li);
      });
    });
  }
  Dialer.loadRecent = loadRecent;

  // ---- inbound screen pop: poll the rep's events ---------------------------------------------------------
  function pollEvents() {
    window.clearTimeout(state.eventsTimer);
    var query = state.cursor ? "?after=" + encodeURIComponent(state.cursor) : "";
    api("GET", "/rep/events" + query).then(function (r) {
      if (r.ok) {
        var first = state.cursor === null;
        state.cursor = r.data.cursor || state.cursor;
        (r.data.events || []).forEach(function (ev) {
          // On the first poll only pop a call that is still likely ringing.
          if (first && ev.at && Date.now() - new Date(ev.at).getTime() > 60000) { return; }
          if (ev.kind === "incoming_call") { pop(ev); }
        });
      }
      if (state.me) { state.eventsTimer = window.setTimeout(pollEvents, EVENTS_POLL_MS); }
    }, function () {
      if (state.me) { state.eventsTimer = window.setTimeout(pollEvents, EVENTS_POLL_MS); }
    });
  }

  function pop(ev) {
    var name = ev.contact && ev.contact.name ? ev.contact.name : "";
    var sameNumber = name.replace(/\D/g, "") === String(ev.from || "").replace(/\D/g, "");
    $("pop-from").textContent = name && !sameNumber ? name + " (" + ev.from + ")" : (name || ev.from);
    var link = $("pop-contact");
    link.hidden = !(ev.contact && ev.contact.url);
    if (ev.contact && ev.contact.url) {
      link.href = ev.contact.url;
      link.textContent = "Open record";
    }
    $("pop").hidden = false;
    $("number").value = ev.from || "";
    loadConversation(ev.from);
    loadRecent();
    Dialer.adapter.incoming(ev);
  }
  Dialer.pop = pop;
  $("pop-close").addEventListener("click", function () { $("pop").hidden = true; });

  function stopPolling() {
    window.clearTimeout(state.eventsTimer);
    window.clearTimeout(state.callTimer);
  }

  window.setInterval(tick, 1000);
  window.Dialer = Dialer;
})();
