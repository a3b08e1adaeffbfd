// The CRM side of the dialer: HubSpot's Calling Extensions SDK (0.9.7, vendored) or Salesforce Open CTI,
// plugged into dialer.js's hooks. Then it starts the dialer.
//   HubSpot: https://developers.hubspot.com/docs/api-reference/crm-calling-extensions-v3/calling-sdk
//   Open CTI (maintenance mode until its retirement in Feb 2028, so this adapter stays thin):
//   https://developer.salesforce.com/docs/atlas.en-us.api_cti.meta/api_cti/sforce_api_cti_methods_lightning.htm
(function () {
  "use strict";

  var Dialer = window.Dialer;
  var crm = Dialer.config.crm;

  // What HubSpot's callEnded wants as callEndStatus for each of our terminal states.
  function endStatus(call) {
    if (call.state === "failed") {
      var why = String(call.outcome || call.status || "").toLowerCase();
      if (why.indexOf("busy") >= 0) { return "BUSY"; }
      if (why.indexOf("no") >= 0 && why.indexOf("answer") >= 0) { return "NO_ANSWER"; }
      return "FAILED";
    }
    return "COMPLETED";
  }

  function hubspot() {
    var CallingExtensions = window.default; // the SDK's UMD build exports its class as window.default
    if (typeof CallingExtensions !== "function") { return; }
    var engagementId = null;
    // The SDK drops messages sent before HubSpot's SYNC: sign-in news waits for onReady.
    var ready = false;
    var loginNews = null;
    var tell = function (news) { if (ready) { news(); } else { loginNews = news; } };
    var externalId = function (call) { return String(call.call_sid || call.id); };
    var sdk;
    sdk = new CallingExtensions({
      debugMode: false,
      eventHandlers: {
        onReady: function (data) {
          ready = true;
          engagementId = (data && data.engagementId) || null;
          sdk.initialized({ isLoggedIn: !!Dialer.state.me, engagementId: engagementId });
          if (loginNews) { loginNews(); loginNews = null; }
        },
        onDialNumber: function (data) {
          // objectType is CONTACT or COMPANY; a contact's id lets the API skip its own phone match.
          var context = { source: "hubspot", objectType: data.objectType, objectId: data.objectId };
          if (String(data.objectType || "").toUpperCase() === "CONTACT") { context.contactId = data.objectId; }
          Dialer.dial(data.phoneNumber, context);
        },
        onCreateEngagementSucceeded: function (data) { remember(data && data.engagementId); },
        onEngagementCreated: function (data) { remember(data && data.engagementId); }, // before SDK 0.6
        onCreateEngagementFailed: function () { engagementId = null; },
        onEndCall: function () { Dialer.hangUp(); },
        onVisibilityChanged: function () {},
        defaultEventHandler: function () {},
      },
    });

    // HubSpot created the call engagement (createEngagement: true): ours is that one, never a second.
    function remember(id) {
      if (!id) { return; }
      engagementId = id;
      var call = Dialer.state.call;
      if (call) {
        call.engagement_id = id;
        Dialer.api("POST", "/calls/" + call.id + "/engagement", { engagement_id: String(id) });
      }
    }

    Dialer.adapter.signedIn = function () { tell(function () { sdk.userLoggedIn(); }); };
    Dialer.adapter.signedOut = function () { tell(function () { sdk.userLoggedOut(); }); };
    Dialer.adapter.placed = function (call) {
      engagementId = null;
      sdk.outgoingCall({
        externalCallId: externalId(call),
        toNumber: call.to,
        fromNumber: call.from,
        callStartTime: Date.now(),
        createEngagement: true,
      });
    };
    Dialer.adapter.changed = function (call) {
      if (call.state === "live") { sdk.callAnswered({ externalCallId: externalId(call) }); }
    };
    Dialer.adapter.ended = function (call) {
      sdk.callEnded({
        externalCallId: externalId(call),
        engagementId: engagementId,
        callEndStatus: endStatus(call),
      });
    };
    Dialer.adapter.completed = function (call) {
      // Switchboard writes the disposition and notes to this engagement itself (one writer, one record).
      sdk.callCompleted({ externalCallId: externalId(call), engagementId: engagementId, hideWidget: false });
    };
    Dialer.adapter.incoming = function (ev) {
      // Switchboard's sync logs the inbound call, so HubSpot must not create an engagement of its own.
      sdk.incomingCall({
        externalCallId: String(ev.call_id),
        fromNumber: ev.from,
        toNumber: ev.to || "",
        callStartTime: Date.now(),
        createEngagement: false,
      });
    };
    Dialer.hubspot = sdk;
  }

  function salesforce() {
    var cti = window.sforce && window.sforce.opencti;
    if (!cti) {
      var warn = document.getElementById("call-error");
      warn.textContent = "Open CTI is not available: open the dialer from Salesforce's softphone.";
      warn.hidden = false;
      return;
    }
    var noop = function () {};
    // A record id at the end of a Lightning URL (/lightning/r/Contact/003.../view).
    var recordId = function (url) {
      var m = /\/([a-zA-Z0-9]{15}|[a-zA-Z0-9]{18})(?:\/view)?\/?$/.exec(String(url || ""));
      return m ? m[1] : null;
    };
    var types = cti.SCREENPOP_TYPE || { SOBJECT: "sobject", URL: "url" };
    function screenPop(contact) {
      if (!contact || !contact.url) { return; }
      var id = recordId(contact.url);
      var args = id ? { type: types.SOBJECT, params: { recordId: id } }
        : { type: types.URL, params: { url: contact.url } };
      args.callback = noop;
      cti.screenPop(args);
    }

    cti.enableClickToDial({ callback: noop });
    cti.onClickToDial({
      listener: function (payload) {
        cti.setSoftphonePanelVisibility({ visible: true, callback: noop });
        var context = { source: "salesforce", recordId: payload.recordId, objectType: payload.objectType };
        if (payload.objectType === "Contact" || payload.objectType === "Lead") {
          context.contactId = payload.recordId;
        }
        Dialer.dial(payload.number, context);
      },
    });
    Dialer.adapter.placed = function (call, context) {
      // Clicked from a record: the rep is on it already. Dialled by hand: show the record we matched.
      if (!context || !context.recordId) { screenPop(call.contact); }
    };
    Dialer.adapter.incoming = function (ev) {
      cti.setSoftphonePanelVisibility({ visible: true, callback: noop });
      screenPop(ev.contact);
    };
    Dialer.opencti = cti;
  }

  if (crm === "hubspot") { hubspot(); }
  if (crm === "salesforce") { salesforce(); }
  Dialer.start();
})();
