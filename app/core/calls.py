"""The rep's dialer, provider-neutral: call outcomes, caller-ID choice, recording policy, destination checks,
and the dialer's view of a call's state. Pure code plus reads of our own tables; no provider SDK.

A click-to-call is one outbound interaction on the ledger (keyed by the rep leg's CallSid) whose facts carry
a `dialer` record (the customer's number, the caller ID, the CRM contact the rep clicked, whether HubSpot's
own call engagement is expected); Twilio's callbacks fold into it like any call's, and the rep's
`disposition` (outcome and notes) and HubSpot's `engagement` id are facts too, so they sync with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import phonenumbers
from phonenumbers import geocoder
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.interactions import CALL_TERMINAL, derive
from app.core.models import OptOut, Tenant, TenantNumber, User
from app.core.phones import to_e164
from app.core.tenants import directory, settings_of

# HubSpot's standard call outcomes (hs_call_disposition is one of these GUIDs in a portal that kept its
# defaults): ../shared/reference/api-facts.md 4.2; a portal's own list is at GET /calling/v1/dispositions.
DEFAULT_OUTCOMES: tuple[dict[str, str], ...] = (
    {"id": "f240bbac-87c9-4f6e-bf70-924b57d47db7", "label": "Connected"},
    {"id": "9d9162e7-6cf3-4944-bf63-4dff82258764", "label": "Busy"},
    {"id": "73a0d17f-1163-4015-bdd5-ec830791da20", "label": "No answer"},
    {"id": "a4c4c377-d246-4b32-a13b-75a56a4cd0ff", "label": "Left live message"},
    {"id": "b2cf5968-551e-4856-9783-52b3da59a7d0", "label": "Left voicemail"},
    {"id": "17b47fee-58de-441e-a44c-c6300d46f273", "label": "Wrong number"},
)

RECORDING_POLICIES = ("always", "never", "consent")

# US states whose wiretap laws require every party's consent to record a call (the usual list; laws change
# and have exceptions, so a tenant can replace it with `recording_consent_states`). Under the `consent`
# policy the customer hears the announcement when their number is in one of these, or its place is unknown.
TWO_PARTY_CONSENT_STATES = frozenset(
    {"CA", "CT", "DE", "FL", "IL", "MD", "MA", "MI", "MT", "NV", "NH", "OR", "PA", "WA"}
)
_STATE_NAMES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA", "Colorado": "CO",
    "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA", "Hawaii": "HI", "Idaho": "ID",
    "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA",
    "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN",
    "Mississippi": "MS", "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV",
    "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC",
    "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX",
    "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington": "WA", "Washington State": "WA",
    "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY", "Washington D.C.": "DC",
}  # fmt: skip

# The dialer's call states (the page shows them; HubSpot's SDK is told the matching lifecycle events).
STATES = ("ringing_rep", "connecting", "live", "ended", "failed")


class Refused(Exception):
    """A call or text the dialer will not place: `status` is the HTTP answer (400, 409, 422), `field` the
    request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


# --- outcomes ------------------------------------------------------------------------------------------


def outcomes(tenant: Tenant) -> list[dict[str, str]]:
    """The tenant's call outcomes [{id, label}]: its `call_outcomes` setting, else HubSpot's standard set."""
    custom = settings_of(tenant).get("call_outcomes") or []
    out = [
        {"id": str(o["id"]), "label": str(o.get("label") or o["id"])}
        for o in custom
        if isinstance(o, dict) and o.get("id")
    ]
    return out or [dict(o) for o in DEFAULT_OUTCOMES]


def outcome_label(tenant: Tenant, outcome_id: str) -> str | None:
    """The label of one of the tenant's outcomes, or None if it is not one of them."""
    return next((o["label"] for o in outcomes(tenant) if o["id"] == outcome_id), None)


# --- destinations and caller ID ------------------------------------------------------------------------


def destination(s: Session, tenant: Tenant, raw: Any, *, field: str = "to") -> str:
    """The E.164 number a rep asked to call or text, or Refused: 400 not a number, 422 one of our own
    numbers or reps, 409 opted out (the consent ledger: app.core.optouts)."""
    if not isinstance(raw, str) or not raw.strip():
        raise Refused(400, f"{field} is required (a phone number)", field)
    e164 = to_e164(raw, tenant.region)
    if e164 is None:
        raise Refused(400, f"{field} is not a phone number", field)
    numbers, users = directory(s, tenant.id)
    if e164 in numbers or e164 in users:
        raise Refused(422, f"{field} is one of this account's own numbers", field)
    opted_out = s.scalar(select(OptOut.opted_out).where(OptOut.tenant_id == tenant.id, OptOut.phone == e164))
    if opted_out:
        raise Refused(409, f"{e164} has opted out; it cannot be contacted from here", field)
    return e164


def area_code(e164: str) -> str | None:
    """The NANP area code of a +1 number (the first three national digits), else None."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    national = str(parsed.national_number)
    return national[:3] if parsed.country_code == 1 and len(national) == 10 else None


def caller_id(s: Session, tenant: Tenant, user: User, to: str) -> str:
    """Our number the customer sees: the tenant's number local to the customer's area code, else the rep's
    own default (`rep_caller_ids` by email), else the tenant's (`default_caller_id`), else its first number.
    Refused (422) when the tenant has no number at all."""
    numbers = list(
        s.scalars(
            select(TenantNumber.e164).where(TenantNumber.tenant_id == tenant.id).order_by(TenantNumber.id)
        )
    )
    if not numbers:
        raise Refused(422, "this account has no phone number to call from")
    wanted = area_code(to)
    if wanted is not None:
        local = [n for n in numbers if area_code(n) == wanted]
        if local:
            return local[0]
    options = settings_of(tenant)
    for preferred in (
        (options.get("rep_caller_ids") or {}).get(user.email),
        options.get("default_caller_id"),
    ):
        e164 = to_e164(preferred, tenant.region) if isinstance(preferred, str) else None
        if e164 in numbers:
            return e164
    return numbers[0]


# --- recording -----------------------------------------------------------------------------------------


def us_state(e164: str) -> str | None:
    """The US state a number's area code belongs to (libphonenumber's geocoder), or None if unknown."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    if parsed.country_code != 1:
        return None
    place = geocoder.description_for_number(parsed, "en")
    if not place:
        return None
    _city, sep, code = place.rpartition(", ")
    if sep and len(code) == 2 and code.isupper():
        return code
    return _STATE_NAMES.get(place)


@dataclass(frozen=True)
class Recording:
    """How a dialer call is recorded: `record` both legs from answer; `announce` tells the customer first."""

    record: bool
    announce: bool
    announcement: str
    reason: str


def recording_for(tenant: Tenant, to: str) -> Recording:
    """The tenant's recording policy (`dialer_recording`: always | never | consent) applied to a customer
    number. An unknown policy counts as `consent`, the cautious one."""
    options = settings_of(tenant)
    policy = options.get("dialer_recording")
    text = str(options.get("recording_announcement") or "")
    if policy == "never":
        return Recording(False, False, text, "policy never")
    if policy == "always":
        return Recording(True, False, text, "policy always")
    states = {
        str(x).upper() for x in options.get("recording_consent_states") or []
    } or TWO_PARTY_CONSENT_STATES
    state = us_state(to)
    if state is None:
        return Recording(True, True, text, "consent: the customer's state is unknown")
    if state in states:
        return Recording(True, True, text, f"consent: {state} requires every party's consent")
    return Recording(True, False, text, f"consent: {state} allows one-party consent")


# --- facts ---------------------------------------------------------------------------------------------


def placement_facts(
    *,
    user_id: int,
    rep_phone: str,
    to: str,
    from_: str,
    contact_id: str | None,
    recording: Recording,
    await_engagement: bool,
    at: str,
) -> dict[str, Any]:
    """The facts of a click-to-call as placed: the rep leg (Twilio calls the rep from our number), who owns
    it, and the dialer record."""
    return {
        "call": {"direction": "outbound-api", "from": from_, "to": rep_phone},
        "parent_status": {"status": "queued", "seq": -1},
        "routed_user_id": user_id,
        "started_at": at,
        "dialer": {
            "to": to,
            "from": from_,
            "contact_id": contact_id,
            "record": recording.record,
            "announce": recording.announce,
            "await_engagement": await_engagement,
            "placed_at": at,
        },
    }


def disposition_facts(outcome: str, label: str, notes: str) -> dict[str, Any]:
    """The rep's outcome and notes; the latest revision wins whatever order events fold in."""
    return {"disposition": {"outcome": outcome, "label": label, "notes": notes, "rev": time.time_ns()}}


def dialer_of(facts: dict[str, Any]) -> dict[str, Any]:
    """The dialer record of a call's facts ({} for a call the dialer did not place)."""
    return dict(facts.get("dialer") or {})


def state_of(facts: dict[str, Any]) -> str:
    """The dialer's state of a call: ringing_rep (Twilio rings the rep), connecting (the rep answered, the
    customer's phone rings), live (both on the line), ended, or failed (the call never reached the rep, or
    the customer's leg failed)."""
    derived = derive("call", facts)
    parent = (facts.get("parent_status") or {}).get("status")
    legs = [*(facts.get("legs") or {}).values(), *(facts.get("dials") or {}).values()]
    leg_statuses = [leg.get("status") for leg in legs]
    if (facts.get("call") or {}).get("direction", "").startswith("inbound"):
        if parent in CALL_TERMINAL or facts.get("ended_at"):
            return "ended"
        return "live" if derived.answered else "ringing_rep"
    rep_answered = parent in ("in-progress", "answered", "completed") or bool(legs)
    ended = (
        parent in CALL_TERMINAL
        or bool(facts.get("ended_at"))
        or any(s in CALL_TERMINAL for s in leg_statuses)
    )
    if ended:
        if "failed" in leg_statuses or parent == "failed":
            return "failed"
        if not rep_answered and not dialer_of(facts).get("hangup_at"):
            return "failed"  # the rep's phone was busy, did not answer, or Twilio could not call it
        return "ended"
    # The customer is on the line once their leg is answered (or the <Dial> bridged); the rep's leg being
    # in progress only means the rep picked up.
    customer_up = any(leg.get("status") in ("in-progress", "answered", "completed") for leg in legs) or any(
        d.get("bridged") for d in (facts.get("dials") or {}).values()
    )
    if customer_up:
        return "live"
    return "connecting" if rep_answered else "ringing_rep"


def hangup_facts(at: str) -> dict[str, Any]:
    """The rep hung up from the dialer (Twilio's completed callback follows)."""
    return {"dialer": {"hangup_at": at}}


def engagement_facts(engagement_id: str) -> dict[str, Any]:
    """The call record the CRM created itself (HubSpot's calling SDK, createEngagement): the sync updates it
    instead of creating one."""
    return {"engagement": {"id": engagement_id}}
