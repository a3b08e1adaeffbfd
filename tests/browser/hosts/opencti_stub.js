// A stand-in for Salesforce's opencti_min.js (which loads only from a Salesforce domain): the Lightning
// Open CTI methods the dialer uses, each answering its callback with {success, returnValue, errors} as
// Salesforce does, and recording every call in window.sforce.opencti.calls for the test.
// https://developer.salesforce.com/docs/atlas.en-us.api_cti.meta/api_cti/sforce_api_cti_methods_lightning.htm
(function () {
  "use strict";
  var ok = function (args) {
    if (args && typeof args.callback === "function") {
      window.setTimeout(function () { args.callback({ success: true, returnValue: null, errors: null }); }, 0);
    }
  };
  var record = function (name, args) {
    var copy = {};
    Object.keys(args || {}).forEach(function (k) { if (typeof args[k] !== "function") { copy[k] = args[k]; } });
    opencti.calls.push({ method: name, args: copy });
  };
  var opencti = {
    calls: [],
    listener: null,
    SCREENPOP_TYPE: { SOBJECT: "sobject", URL: "url", OBJECTHOME: "objecthome", LIST: "list",
      SEARCH: "search", NEW_RECORD_MODAL: "newRecord", FLOW: "flow" },
    enableClickToDial: function (args) { record("enableClickToDial", args); ok(args); },
    disableClickToDial: function (args) { record("disableClickToDial", args); ok(args); },
    onClickToDial: function (args) { record("onClickToDial", {}); opencti.listener = args.listener; },
    screenPop: function (args) { record("screenPop", args); ok(args); },
    setSoftphonePanelVisibility: function (args) { record("setSoftphonePanelVisibility", args); ok(args); },
    searchAndScreenPop: function (args) { record("searchAndScreenPop", args); ok(args); },
    // What Salesforce does when the rep clicks a phone field (the payload of onClickToDial's listener).
    click: function (payload) { opencti.listener(payload); },
  };
  window.sforce = { opencti: opencti };
})();
