"""Salesforce connector on simple-salesforce: people (Contacts and Leads) by phone or email, calls and texts
as Tasks, emails as EmailMessage records (Enhanced Email; a Task with TaskSubtype=Email in an org without
EmailMessage), follow-up Tasks, written 200 at a time through sObject Collections.

Exactly once: every record we write carries our id in the External ID field `Switchboard_Id__c` (created by
`switchboard salesforce setup`), and we write with *upsert* on it (composite/sobjects/Task/Switchboard_Id__c).
A job that crashes after Salesforce created the Task but before we saved its id upserts the same Task again on
retry. An org without the field falls back to a lookup by our key (Task.CallObject: the CallSid of a call, our
id for texts and tasks; an email's MessageIdentifier; a person's E.164 phone or email) before it creates
anything.

Requests: every call reads `Sforce-Limit-Info` (api-usage=N/M); a per-org guard holds non-urgent work (the
sync's lookups and activity writes) with a RetryableError and a retry_after once the org has used the tenant's
share of its daily allocation (`salesforce_api_share`, default 0.5), so Switchboard never starves the org's
other integrations. 403 REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW, 5xx and timeouts are retryable; 401
INVALID_SESSION_ID refreshes the token once (auth.py) and retries; other 4xx are permanent with Salesforce's
message.

Matching: SOSL `FIND {4155550100 OR 14155550100} IN PHONE FIELDS RETURNING Contact(...), Lead(... WHERE
IsConverted = false)`, about 130 numbers per search (FIND {...} kept within 4,000 characters), each hit
confirmed by normalizing its stored numbers to E.164; then by email (IN EMAIL FIELDS). Contact or Lead, and
what an unknown number becomes, are tenant settings.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from app.core import bootstrap
from app.core.interactions import InteractionData
from app.core.models import Tenant
from app.core.phones import pretty, to_e164
from app.core.queue import redis_for
from app.core.ratelimit import Budget
from connectors.base import (
    ActivityWrite,
    ContactGone,
    ContactMatch,
    CrmError,
    CrmRef,
    Party,
    PermanentError,
    RetryableError,
    TaskSpec,
    Throttled,
    chunks,
    raise_if_error,
)
from connectors.salesforce import mapping
from connectors.salesforce.auth import SalesforceTokens
from connectors.salesforce.mapping import EXTERNAL_ID, OPT_OUT_FIELD, PHONE_FIELDS
from connectors.salesforce.settings import DEFAULTS

log = logging.getLogger(__name__)

T = TypeVar("T")

COLLECTION_MAX = 200  # records per sObject Collections request
# SOSL: a FIND {...} longer than 4,000 characters loses its logical operators, past 10,000 it finds nothing;
# we pack as many numbers (two terms each) as fit in 4,000, about 130, and as many emails.
# https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_sosl_syntax.htm
FIND_MAX_CHARS = 4000
ROUNDS = 3  # tries of the records that failed retryably inside a collection (UNABLE_TO_LOCK_ROW)
LOCK_BACKOFF = 0.2
CONTACT_CACHE_TTL = 300
DESCRIBE_TTL = 3600
LIMIT_RETRY_AFTER = 3600.0  # the daily allocation is a rolling 24 hours: look again in an hour
# What Salesforce last reported is trusted for as long: a held org makes no non-urgent request to learn that
# its usage fell, so after an hour the guard lets the next request through, which reports it afresh.
USAGE_TTL = int(LIMIT_RETRY_AFTER)
TIMEOUT = (5, 30)
RETRYABLE_CODES = {"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION"}
GONE_CODES = {"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID", "FIELD_INTEGRITY_EXCEPTION"}
_SF_CONTACT_ID = re.compile(r"003[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?")
SEARCH_FIELDS = {
    "Contact": "Id, FirstName, LastName, Email, "
    + ", ".join(PHONE_FIELDS["Contact"])
    + ", OwnerId, AccountId, "
    "LastModifiedDate",
    "Lead": "Id, FirstName, LastName, Email, "
    + ", ".join(PHONE_FIELDS["Lead"])
    + ", OwnerId, LastModifiedDate "
    "WHERE IsConverted = false",
}


class _HttpsToHttp(HTTPAdapter):
    """simple-salesforce forces https://; an http:// instance (the emulator, a dev proxy) gets its scheme
    back."""

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        u = urlsplit(request.url)
        request.url = urlunsplit(("http", u.netloc, u.path, u.query, u.fragment))
        return super().send(request, **kwargs)


def options_of(tenant: Tenant) -> dict[str, Any]:
    """The tenant's Salesforce settings with the defaults filled in."""
    return {**DEFAULTS, **{k: v for k, v in (tenant.settings or {}).items() if k in DEFAULTS}}


class ApiBudget:
    """The org's daily API allocation as Salesforce reports it (Sforce-Limit-Info), shared through Redis by
    every worker: non-urgent requests wait once the org has used `share` of it."""

    def __init__(self, redis: Any, org: str, share: float) -> None:
        self.redis, self.key, self.share = redis, f"switchboard:salesforce:{org}:api-usage", float(share)

    def learn(self, usage: Any) -> None:
        """Remember the latest api-usage=N/M (simple-salesforce's parsed `api_usage`)."""
        found = (usage or {}).get("api-usage")
        if found is not None:
            self.redis.set(self.key, f"{found.used}/{found.total}", ex=USAGE_TTL)

    def exhausted(self) -> None:
        """Salesforce answered REQUEST_LIMIT_EXCEEDED: the allocation is spent."""
        raw = self.redis.get(self.key)
        total = int(raw.decode().split("/")[1]) if raw else 1
        self.redis.set(self.key, f"{total}/{total}", ex=USAGE_TTL)

    def usage(self) -> tuple[int, int] | None:
        raw = self.redis.get(self.key)
        if not raw:
            return None
        used, _, total = raw.decode().partition("/")
        return int(used), int(total)

    def check(self) -> None:
        """RetryableError (retry_after) when the org is past the share non-urgent work may use."""
        usage = self.usage()
        if usage is None or usage[1] <= 0:
            return
        used, total = usage
        if used >= self.share * total:
            raise Throttled(
                f"Salesforce org has used {used} of {total} daily API requests; Switchboard holds non-urgent "
                f"writes past {self.share:.0%} (salesforce_api_share)",
                retry_after=LIMIT_RETRY_AFTER,
            )


class SalesforceConnector:
    """Connector for one tenant's Salesforce org."""

    name: ClassVar[str] = "salesforce"
    batch_size: ClassVar[int] = COLLECTION_MAX  # sObject Collections take 200 records a request
    OPT_OUT_FIELD: ClassVar[str] = OPT_OUT_FIELD

    def __init__(self, tenant: Tenant) -> None:
        self.tenant_id = tenant.id
        self.region = tenant.region
        self.org = tenant.crm_account_id or f"tenant-{tenant.id}"
        self.settings = bootstrap.current()
        self.redis = redis_for(self.settings)
        self.options = options_of(tenant)
        self.api_budget = ApiBudget(self.redis, self.org, self.options["salesforce_api_share"])
        self.tokens = SalesforceTokens(tenant.id, self.settings, self.redis)
        self.requests = 0  # Salesforce requests made by this instance (for logs and benchmarks)
        self.accounts: dict[str, str] = {}  # contact id -> its AccountId
        self._sf: tuple[str, Salesforce] | None = None
        self._fields: dict[str, set[str]] = {}

    def budget(self) -> Budget:
        """The org's daily API usage against the share Switchboard may use (salesforce_api_share of the
        allocation), as Salesforce last reported it (Sforce-Limit-Info, shared by every worker), without
        spending any. Always `scarce`: every request counts against a 24-hour allocation the org shares
        with its other integrations, so the sync holds bursts for full batches from the first request
        (a trickle still syncs at once: the hold needs rows arriving fast)."""
        usage = self.api_budget.usage()
        if usage is None:  # no response has told us the allocation yet
            return Budget(0, 1, 0.0, scarce=True)
        return Budget(usage[0], max(1, int(self.api_budget.share * usage[1])), 0.0, scarce=True)

    # --- transport ---------------------------------------------------------------------------------

    def _client(self) -> tuple[str, Salesforce]:
        secrets = self.tokens.current()
        token = str(secrets["access_token"])
        if self._sf is None or self._sf[0] != token:
            session = requests.Session()
            instance = str(secrets["instance_url"])
            if instance.startswith("http://"):
                session.mount(f"https://{urlsplit(instance).netloc}", _HttpsToHttp())
            sf = Salesforce(
                instance_url=instance,
                session_id=token,
                session=session,
                version=self.settings.salesforce_api_version,
            )
            self._sf = (token, sf)
        return self._sf

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        urgent: bool = True,
    ) -> Any:
        """One REST request (path under /services/data/vXX.X/): the budget guard for non-urgent work, one
        token
        refresh on 401 INVALID_SESSION_ID, Salesforce's errors translated."""
        if not urgent:
            self.api_budget.check()
        refreshed = False
        while True:
            token, sf = self._client()
            self.requests += 1
            try:
                kwargs: dict[str, Any] = {"timeout": TIMEOUT}
                if body is not None:
                    kwargs["json"] = body
                result = sf.restful(path, params=params, method=method, **kwargs)
                self.api_budget.learn(sf.api_usage)
                return result
            except SalesforceExpiredSession:
                if refreshed:
                    raise RetryableError(
                        "Salesforce HTTP 401 after a token refresh: INVALID_SESSION_ID"
                    ) from None
                self.tokens.refresh(stale=token)
                refreshed = True
            except SalesforceError as exc:
                translated = _translate(exc)
                if _code(exc) == "REQUEST_LIMIT_EXCEEDED":
                    self.api_budget.exhausted()
                raise translated from None
            except requests.RequestException as exc:
                raise RetryableError(f"Salesforce unreachable: {type(exc).__name__}") from None

    def query_all(self, soql: str, *, urgent: bool = True) -> list[dict[str, Any]]:
        """Every record of a SOQL query, following nextRecordsUrl."""
        page = self.call("GET", "query/", params={"q": soql}, urgent=urgent)
        records = list(page.get("records") or [])
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            locator = str(page["nextRecordsUrl"]).rsplit("/query/", 1)[1]
            page = self.call("GET", f"query/{locator}", urgent=urgent)
            records += page.get("records") or []
        return records

    def search(self, sosl: str, *, urgent: bool = True) -> list[dict[str, Any]]:
        """The records of a SOSL search."""
        found = self.call("GET", "search/", params={"q": sosl}, urgent=urgent)
        return list((found or {}).get("searchRecords") or [])

    def fields(self, sobject: str) -> set[str]:
        """The org's field names of an sObject (describe, cached in Redis for an hour)."""
        if sobject not in self._fields:
            key = f"switchboard:salesforce:{self.org}:describe:{sobject}"
            raw = self.redis.get(key)
            if raw:
                self._fields[sobject] = set(json.loads(raw))
            else:
                described = self.call("GET", f"sobjects/{sobject}/describe/")
                names = sorted(f["name"] for f in described.get("fields") or [])
                self.redis.set(key, json.dumps(names), ex=DESCRIBE_TTL)
                self._fields[sobject] = set(names)
        return self._fields[sobject]

    def forget_fields(self) -> None:
        """Drop the describe cache (after setup created fields)."""
        self._fields.clear()
        for sobject in ("Task", "Contact", "Lead", "Opportunity", "EmailMessage"):
            self.redis.delete(f"switchboard:salesforce:{self.org}:describe:{sobject}")
        self.redis.delete(f"switchboard:salesforce:{self.org}:has:EmailMessage")

    # --- contacts ----------------------------------------------------------------------------------

    def _cache_key(self, key: str) -> str:
        return f"switchboard:salesforce:{self.org}:contact:{key}"

    def _remember(self, key: str, match: ContactMatch) -> None:
        value = {"id": match.ref.id, "owner": match.owner_id, "reason": match.reason}
        if match.ref.id in self.accounts:
            value["account"] = self.accounts[match.ref.id]
        self.redis.set(self._cache_key(key), json.dumps(value), ex=CONTACT_CACHE_TTL)

    def _recall(self, keys: list[str]) -> dict[str, ContactMatch]:
        if not keys:
            return {}
        out = {}
        for key, raw in zip(keys, self.redis.mget([self._cache_key(k) for k in keys]), strict=True):
            if raw:
                v = json.loads(raw)
                out[key] = ContactMatch(CrmRef("contact", v["id"]), v["owner"], v["reason"] + " (cached)")
                if "account" in v:
                    self.accounts[v["id"]] = v["account"]
        return out

    def _account_key(self, contact_id: str) -> str:
        return f"switchboard:salesforce:{self.org}:account:{contact_id}"

    def _forget_person(self, person_id: str) -> None:
        self.redis.delete(self._account_key(person_id))
        for key in self.redis.scan_iter(self._cache_key("*")):
            raw = self.redis.get(key)
            if raw and json.loads(raw)["id"] == person_id:
                self.redis.delete(key)

    def find_contacts(self, parties: Sequence[Party]) -> dict[Party, ContactMatch]:
        """Match parties by phone (any stored format, any phone field of a Contact or unconverted Lead), else
        by email; SOSL, as many numbers a search as FIND {...} holds, cached for five minutes."""
        phones = sorted({p.phone for p in parties if p.phone})
        by_phone = self._recall(phones)
        todo = [p for p in phones if p not in by_phone]
        for chunk in _fitting(todo, lambda p: " OR ".join(map(mapping.sosl_escape, mapping.phone_terms(p)))):
            by_phone.update(self._search_phones(chunk))
        emails = sorted(
            {p.email.lower() for p in parties if p.email and not (p.phone and p.phone in by_phone)}
        )
        by_email = {
            k.removeprefix("email:"): v for k, v in self._recall([f"email:{e}" for e in emails]).items()
        }
        missing = [e for e in emails if e not in by_email]
        for chunk in _fitting(missing, lambda e: f'"{mapping.sosl_escape(e)}"'):
            by_email.update(self._search_emails(chunk))
        self._store_accounts([m.ref.id for m in [*by_phone.values(), *by_email.values()]])
        found: dict[Party, ContactMatch] = {}
        for party in parties:
            match = (by_phone.get(party.phone) if party.phone else None) or (
                by_email.get(party.email.lower()) if party.email else None
            )
            if match is not None:
                found[party] = match
        return found

    def _returning(self) -> str:
        return f"RETURNING Contact({SEARCH_FIELDS['Contact']}), Lead({SEARCH_FIELDS['Lead']})"

    def _search_phones(self, phones: list[str]) -> dict[str, ContactMatch]:
        terms = [t for phone in phones for t in mapping.phone_terms(phone)]
        find = " OR ".join(mapping.sosl_escape(t) for t in terms)
        sosl = f"FIND {{{find}}} IN PHONE FIELDS {self._returning()}"
        candidates: dict[str, list[dict[str, Any]]] = {}
        for record in self.search(sosl, urgent=False):
            kind = (record.get("attributes") or {}).get("type", mapping.kind_of(record["Id"]))
            if "AccountId" in record:  # a Contact (with no account: "", so no query for it later)
                self.accounts[record["Id"]] = record["AccountId"] or ""
            numbers = {to_e164(record.get(f), self.region) for f in PHONE_FIELDS.get(kind, ())}
            for phone in phones:
                if phone in numbers:
                    candidates.setdefault(phone, []).append(record)
        out = {}
        for phone, records in candidates.items():
            chosen, reason = mapping.choose_record(records, phone, self.options["salesforce_match_prefer"])
            out[phone] = ContactMatch(CrmRef("contact", chosen["Id"]), chosen.get("OwnerId"), reason)
            self._remember(phone, out[phone])
        return out

    def _search_emails(self, emails: list[str]) -> dict[str, ContactMatch]:
        terms = " OR ".join(f'"{mapping.sosl_escape(e)}"' for e in emails)
        sosl = f"FIND {{{terms}}} IN EMAIL FIELDS {self._returning()}"
        candidates: dict[str, list[dict[str, Any]]] = {}
        for record in self.search(sosl, urgent=False):
            email = str(record.get("Email") or "").lower()
            if email in emails:
                candidates.setdefault(email, []).append(record)
                if "AccountId" in record:
                    self.accounts[record["Id"]] = record["AccountId"] or ""
        out = {}
        for email, records in candidates.items():
            chosen, _ = mapping.choose_record(records, email, self.options["salesforce_match_prefer"])
            out[email] = ContactMatch(CrmRef("contact", chosen["Id"]), chosen.get("OwnerId"), "email")
            self._remember(f"email:{email}", out[email])
        return out

    def find_contact(self, party: Party) -> ContactMatch | None:
        """The Contact or Lead for one party."""
        return self.find_contacts([party]).get(party)

    def create_contacts(self, parties: Sequence[tuple[Party, str]]) -> dict[str, CrmRef | CrmError]:
        """Create a Lead (or a Contact: salesforce_create_as) per unknown party, by upsert on
        Switchboard_Id__c;
        without the field, look the party's number and email up first and create only who is not there."""
        sobject = self.options["salesforce_create_as"]
        by_ext = {ext: party for party, ext in parties}
        keyed = EXTERNAL_ID in self.fields(sobject)
        out: dict[str, CrmRef | CrmError] = {}
        existing = {} if keyed else self._existing_people(sobject, list(by_ext.values()))
        todo = []
        for ext, party in by_ext.items():
            known = existing.get(party.phone or "") or existing.get((party.email or "").lower())
            if known:
                out[ext] = CrmRef("contact", known)
            else:
                todo.append(ext)
        for chunk in chunks(todo, COLLECTION_MAX):
            records = [mapping.person_record(by_ext[e], sobject, e if keyed else None) for e in chunk]
            if keyed:
                results = self._collection("PATCH", f"composite/sobjects/{sobject}/{EXTERNAL_ID}", records)
            else:
                results = self._collection("POST", "composite/sobjects", records)
            out.update(zip(chunk, [_ref("contact", r) for r in results], strict=True))
        for ext, result in out.items():
            party = by_ext[ext]
            if isinstance(result, CrmRef) and party.phone:
                self._remember(party.phone, ContactMatch(result, None, f"created by switchboard ({sobject})"))
        return out

    def _existing_people(self, sobject: str, parties: list[Party]) -> dict[str, str]:
        """{E.164 phone or lowercased email: id} of the records we would otherwise create (exact SOQL, no
        index
        lag): the fallback when the org has no Switchboard_Id__c."""
        phones = sorted({p.phone for p in parties if p.phone})
        emails = sorted({p.email.lower() for p in parties if p.email and not p.phone})
        found: dict[str, str] = {}
        for chunk in chunks(phones, COLLECTION_MAX):
            soql = f"SELECT Id, Phone FROM {sobject} WHERE Phone IN ({_in(chunk)})"
            for r in self.query_all(soql, urgent=False):
                found.setdefault(str(r.get("Phone")), r["Id"])
        for chunk in chunks(emails, COLLECTION_MAX):
            soql = f"SELECT Id, Email FROM {sobject} WHERE Email IN ({_in(chunk)})"
            for r in self.query_all(soql, urgent=False):
                found.setdefault(str(r.get("Email")).lower(), r["Id"])
        return found

    def create_contact(self, party: Party, *, external_id: str) -> CrmRef:
        """Create one Lead or Contact (idempotent on external_id)."""
        return raise_if_error(self.create_contacts([(party, external_id)])[external_id])

    def contact_info(self, contact: CrmRef, extra: Sequence[str] = ()) -> dict[str, Any]:
        """The person's fields (a Contact or a Lead, by id prefix), plus `extra` fields the org has (a name as
        given, or as a custom field: csm_owner_id -> CSM_Owner_Id__c)."""
        sobject = mapping.kind_of(contact.id)
        available = self.fields(sobject)
        wanted = ["FirstName", "LastName", "Email", "Phone", "MobilePhone", "OwnerId"]
        wanted += ["AccountId"] if sobject == "Contact" else []
        names = {name: _field_name(name, available) for name in extra}
        wanted += sorted({n for n in names.values() if n and n not in wanted})
        record = self.call("GET", f"sobjects/{sobject}/{contact.id}", params={"fields": ",".join(wanted)})
        first, last = record.get("FirstName") or "", record.get("LastName") or ""
        phone = to_e164(record.get("Phone") or record.get("MobilePhone"), self.region)
        info: dict[str, Any] = {
            "id": str(record.get("Id") or contact.id),
            "name": f"{first} {last}".strip() or (pretty(phone) if phone else record.get("Email")),
            "first_name": first or None,
            "email": record.get("Email"),
            "phone": phone,
            "owner_id": record.get("OwnerId"),
            "time_zone": None,  # Contacts and Leads have no time-zone field; the number's zone is used
        }
        for name, field in names.items():
            info[name] = record.get(field) if field else None
        return info

    def update_contact(self, contact: CrmRef, properties: dict[str, Any]) -> None:
        """PATCH the person's fields; the opt-out mirror is skipped (logged) when the org lacks its field."""
        sobject = mapping.kind_of(contact.id)
        values = dict(properties)
        if OPT_OUT_FIELD in values and OPT_OUT_FIELD not in self.fields(sobject):
            log.info("salesforce.opt_out_field_missing tenant=%s sobject=%s", self.tenant_id, sobject)
            values.pop(OPT_OUT_FIELD)
        if values:
            self.call("PATCH", f"sobjects/{sobject}/{contact.id}", body=values)

    def deal_context(self, deal_id: str) -> dict[str, Any]:
        """The Opportunity's name, amount, stage (closedwon/closedlost when closed), owner, its primary
        contact
        (OpportunityContactRole, else the account's first Contact), and csm_owner_id from CSM_Owner_Id__c or
        CSM_Owner__c when the org has one."""
        available = self.fields("Opportunity")
        csm = _field_name("csm_owner_id", available) or _field_name("CSM_Owner", available)
        wanted = ["Name", "Amount", "StageName", "OwnerId", "AccountId", "IsWon", "IsClosed", "CloseDate"]
        wanted += [csm] if csm else []
        deal = self.call("GET", f"sobjects/Opportunity/{deal_id}", params={"fields": ",".join(wanted)})
        roles = self.query_all(
            "SELECT ContactId, IsPrimary FROM OpportunityContactRole WHERE OpportunityId = "
            f"{mapping.soql_quote(deal_id)} ORDER BY IsPrimary DESC LIMIT 1"
        )
        contact = roles[0]["ContactId"] if roles else None
        if contact is None and deal.get("AccountId"):
            people = self.query_all(
                f"SELECT Id FROM Contact WHERE AccountId = {mapping.soql_quote(deal['AccountId'])} "
                "ORDER BY CreatedDate LIMIT 1"
            )
            contact = people[0]["Id"] if people else None
        return {
            "id": str(deal.get("Id") or deal_id),
            "name": deal.get("Name"),
            "amount": deal.get("Amount"),
            "stage": mapping.stage_key(deal.get("StageName"), deal.get("IsWon"), deal.get("IsClosed")),
            "stage_name": deal.get("StageName"),
            "owner_id": deal.get("OwnerId"),
            "csm_owner_id": deal.get(csm) if csm else None,
            "account_id": deal.get("AccountId"),
            "contact_id": contact,
        }

    def owner_hint(self, phone: str) -> str | None:
        """The owner of the person last matched to this number (from our cache; never calls Salesforce)."""
        cached = self._recall([phone]).get(phone)
        return cached.owner_id if cached else None

    # --- activities --------------------------------------------------------------------------------

    def _load_accounts(self, contact_ids: list[str]) -> None:
        """The AccountId of Contacts we have not seen in a search: from Redis (a search or a query of another
        worker's drain learned it), else queried 200 ids at a time."""
        todo = sorted(
            {c for c in contact_ids if _SF_CONTACT_ID.fullmatch(c or "") and c not in self.accounts}
        )
        if todo:
            keys = [self._account_key(c) for c in todo]
            for contact, raw in zip(todo, self.redis.mget(keys), strict=True):
                if raw is not None:
                    self.accounts[contact] = raw.decode()
            todo = [c for c in todo if c not in self.accounts]
        for chunk in chunks(todo, COLLECTION_MAX):
            soql = (
                f"SELECT Id, AccountId FROM Contact WHERE Id IN ({', '.join(map(mapping.soql_quote, chunk))})"
            )
            for r in self.query_all(soql, urgent=False):
                self.accounts[r["Id"]] = r.get("AccountId") or ""
        self._store_accounts(todo)

    def _store_accounts(self, contact_ids: Iterable[str]) -> None:
        """Share what we learned of these Contacts' accounts with the other drains (5 minutes)."""
        known = {c: self.accounts[c] for c in contact_ids if c in self.accounts}
        if known:
            with self.redis.pipeline(transaction=False) as pipe:
                for contact, account in known.items():
                    pipe.set(self._account_key(contact), account, ex=CONTACT_CACHE_TTL)
                pipe.execute()

    def has_email_message(self) -> bool:
        """Whether the org has EmailMessage (Enhanced Email; absent when it is off, or not visible to our
        user: its describe answers 404 NOT_FOUND). Learned once and shared through Redis like the describe."""
        key = f"switchboard:salesforce:{self.org}:has:EmailMessage"
        raw = self.redis.get(key)
        if raw is not None:
            return raw == b"1"
        try:
            self.fields("EmailMessage")
            found = True
        except PermanentError as exc:
            if "HTTP 404" not in str(exc):
                raise
            found = False
        self.redis.set(key, "1" if found else "0", ex=DESCRIBE_TTL)
        return found

    def write_activities(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        """Calls and texts as Tasks; emails as EmailMessage records where the org has EmailMessage, else as
        Tasks with TaskSubtype=Email. Each kind in collections of 200, in the items' order."""
        # An email first written as a Task (00T: before the org had EmailMessage, or before we knew) stays
        # that Task, so a later event updates it rather than making a second record.
        emails = [
            i
            for i, item in enumerate(items)
            if item.data.channel == "email" and not (item.record and item.record.id.startswith("00T"))
        ]
        out: list[CrmRef | CrmError]
        if not emails or not self.has_email_message():
            out = self._write_tasks(items)
        else:
            out = [PermanentError("not written")] * len(items)
            others = [i for i in range(len(items)) if i not in set(emails)]
            for indexes, write in ((emails, self._write_emails), (others, self._write_tasks)):
                if indexes:
                    for i, result in zip(indexes, write([items[i] for i in indexes]), strict=True):
                        out[i] = result
        self._mark_email_trouble([item for item in items if item.data.channel == "email"])
        return out

    def _write_tasks(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        """Upsert calls and texts as Tasks by Switchboard_Id__c, 200 per request (allOrNone false); a record
        that failed retryably (UNABLE_TO_LOCK_ROW) is sent again alone, the others keep their result."""
        fields = self.fields("Task")
        keyed = EXTERNAL_ID in fields
        if not keyed and "CallObject" not in fields:
            error = PermanentError(
                "the org has neither Switchboard_Id__c nor CallObject on Task; "
                "run `switchboard salesforce setup`"
            )
            return [error] * len(items)
        records = self._records(items, mapping.interaction_task, fields)
        if keyed:
            results = self._upsert_records("Task", records, {"TaskSubtype"})
        else:
            results = self._write_by_lookup("Task", "CallObject", records, [i.record for i in items])
        return self._refs(items, results)

    def _records(
        self, items: Sequence[ActivityWrite], build: Callable[..., dict[str, Any]], fields: set[str]
    ) -> list[dict[str, Any]]:
        """The items as records of one sObject (`build`: mapping.interaction_task or email_message), each
        with its person and that person's account."""
        self._load_accounts([i.contact.id for i in items])
        return [
            build(
                item.data,
                who_id=item.contact.id or None,
                account_id=self.accounts.get(item.contact.id) or None,
                fields=fields,
                external_id=item.external_id,
                create=item.record is None,
            )
            for item in items
        ]

    def _write_emails(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        """Emails as EmailMessage records: upsert by Switchboard_Id__c when setup created it on
        EmailMessage, else a lookup by MessageIdentifier before creating; later events update the same
        record (ToIds and Status are not sent again: see mapping.email_message)."""
        fields = self.fields("EmailMessage")
        records = self._records(items, mapping.email_message, fields)
        if EXTERNAL_ID in fields:
            results = self._upsert_records("EmailMessage", records, mapping.EMAIL_CREATE_ONLY)
        else:
            known = [i.record for i in items]
            results = self._write_by_lookup(
                "EmailMessage", "MessageIdentifier", records, known, mapping.EMAIL_CREATE_ONLY
            )
        return self._refs(items, results)

    def _mark_email_trouble(self, items: Sequence[ActivityWrite]) -> None:
        """Bounces, spam complaints and unsubscribes shown on the Contact or Lead itself (EmailMessage's
        Status cannot say so after insert), one collection for the batch. Best effort: the email record is
        written either way, and a failed mark is retried with the email's next event."""
        marks = {
            item.contact.id: mark
            for item in items
            if item.contact.id and (mark := mapping.email_trouble(item.data, item.contact.id)) is not None
        }
        if not marks:
            return
        for result in self._collection("PATCH", "composite/sobjects", list(marks.values())):
            if not (isinstance(result, dict) and result.get("success")):
                log.warning("salesforce.email_trouble_not_marked org=%s result=%s", self.org, result)

    def _refs(
        self, items: Sequence[ActivityWrite], results: list[dict[str, Any] | CrmError]
    ) -> list[CrmRef | CrmError]:
        out: list[CrmRef | CrmError] = []
        for item, result in zip(items, results, strict=True):
            ref = _ref(item.data.channel, result)
            if isinstance(ref, ContactGone) and item.contact.id:
                self._forget_person(item.contact.id)
            out.append(ref)
        return out

    def _upsert_records(
        self, sobject: str, records: list[dict[str, Any]], create_only: set[str] | frozenset[str]
    ) -> list[dict[str, Any] | CrmError]:
        path = f"composite/sobjects/{sobject}/{EXTERNAL_ID}"
        results = self._collection("PATCH", path, records, urgent=False)
        # A record created by a run that crashed before we saved its id: its create-only fields (TaskSubtype;
        # an email's ToIds and Status) cannot be updated, so send those again without them (the upsert then
        # updates the record the first run created).
        again = [
            i
            for i, r in enumerate(results)
            if isinstance(r, dict)
            and not r.get("success")
            and any(create_only & set(e.get("fields") or []) for e in r.get("errors") or [])
        ]
        if again:
            retry = [{k: v for k, v in records[i].items() if k not in create_only} for i in again]
            for i, r in zip(again, self._collection("PATCH", path, retry, urgent=False), strict=True):
                results[i] = r
        return results

    def _write_by_lookup(
        self,
        sobject: str,
        key_field: str,
        records: list[dict[str, Any]],
        known: list[CrmRef | None],
        create_only: set[str] | frozenset[str] = frozenset({"TaskSubtype"}),
    ) -> list[dict[str, Any] | CrmError]:
        """No External ID field: find each record by its key (a Task's CallObject, an email's
        MessageIdentifier), then update it or create it."""
        keys = [str(r.get(key_field) or "") for r in records]
        existing: dict[str, str] = {}
        for chunk in chunks(sorted({k for k in keys if k}), COLLECTION_MAX):
            soql = f"SELECT Id, {key_field} FROM {sobject} WHERE {key_field} IN ({_in(chunk)})"
            for r in self.query_all(soql, urgent=False):
                existing.setdefault(str(r[key_field]), r["Id"])
        updates, creates = [], []
        for i, (record, key) in enumerate(zip(records, keys, strict=True)):
            record_id = existing.get(key) or (known[i].id if known[i] else None)
            if record_id:
                updates.append(
                    (i, {**{k: v for k, v in record.items() if k not in create_only}, "id": record_id})
                )
            else:
                creates.append((i, record))
        results: list[dict[str, Any] | CrmError] = [PermanentError("not written")] * len(records)
        for method, batch in (("PATCH", updates), ("POST", creates)):
            if batch:
                written = self._collection(method, "composite/sobjects", [r for _, r in batch], urgent=False)
                for (i, _), r in zip(batch, written, strict=True):
                    results[i] = r
        return results

    def _collection(
        self, method: str, path: str, records: list[dict[str, Any]], *, urgent: bool = False
    ) -> list[dict[str, Any] | CrmError]:
        """sObject Collections, 200 records a request, allOrNone false: one result per record, in order.
        Records that failed retryably are sent again (up to ROUNDS tries) without the ones that succeeded or
        failed for good; a request that fails as a whole fails each of its records with that error."""
        results: list[dict[str, Any] | CrmError] = [PermanentError("not written")] * len(records)
        for start in range(0, len(records), COLLECTION_MAX):
            pending = list(range(start, min(start + COLLECTION_MAX, len(records))))
            for round_ in range(ROUNDS):
                if round_:
                    time.sleep(LOCK_BACKOFF * round_)
                body = {"allOrNone": False, "records": [records[i] for i in pending]}
                try:
                    answers = self.call(method, path, body=body, urgent=urgent) or []
                except CrmError as exc:
                    for i in pending:
                        results[i] = exc
                    break
                retry = []
                for i, answer in zip(pending, answers, strict=True):
                    results[i] = answer
                    if not answer.get("success") and _record_code(answer) in RETRYABLE_CODES:
                        retry.append(i)
                pending = retry
                if not pending:
                    break
        return results

    def log_interaction(self, contact: CrmRef, data: InteractionData, *, external_id: str) -> CrmRef:
        """Write one activity (idempotent on external_id)."""
        return raise_if_error(self.write_activities([ActivityWrite(contact, data, external_id)])[0])

    def update_interaction(self, ref: CrmRef, data: InteractionData) -> None:
        """Patch the Task with the interaction's latest state."""
        external_id = f"switchboard-interaction-{data.id}"
        raise_if_error(
            self.write_activities([ActivityWrite(CrmRef("contact", ""), data, external_id, ref)])[0]
        )

    def create_task(self, contact: CrmRef | None, task: TaskSpec, *, external_id: str) -> CrmRef:
        """Create (or find, by external_id) a follow-up Task on the person; urgent (a rep waits for it)."""
        fields = self.fields("Task")
        record = mapping.task_record(
            task, who_id=contact.id if contact else None, fields=fields, external_id=external_id
        )
        if EXTERNAL_ID in fields:
            [result] = self._collection(
                "PATCH", f"composite/sobjects/Task/{EXTERNAL_ID}", [record], urgent=True
            )
        else:
            [result] = self._write_by_lookup("Task", "CallObject", [record], [None])
        return raise_if_error(_ref("task", result))

    # --- owners and setup --------------------------------------------------------------------------

    def owners(self) -> list[dict[str, str]]:
        """The org's active users: [{id, email, name}]."""
        users = self.query_all("SELECT Id, Email, FirstName, LastName FROM User WHERE IsActive = true")
        return [
            {
                "id": u["Id"],
                "email": str(u.get("Email") or "").lower(),
                "name": " ".join(x for x in (u.get("FirstName"), u.get("LastName")) if x),
            }
            for u in users
        ]

    def setup(self) -> tuple[list[str], list[str]]:
        """Create the fields Switchboard writes (idempotent) through the Tooling API: the External ID
        Switchboard_Id__c on Task (as an Activity field), Contact and Lead (and EmailMessage where the org
        has it), and the SMS opt-out checkbox on Contact and Lead. Returns (created, refused) as
        "Object.Field" names; refused ones need the manual steps."""
        wanted = [
            ("Task", "Activity", EXTERNAL_ID, _external_id_metadata()),
            ("Contact", "Contact", EXTERNAL_ID, _external_id_metadata()),
            ("Lead", "Lead", EXTERNAL_ID, _external_id_metadata()),
            ("Contact", "Contact", OPT_OUT_FIELD, _checkbox_metadata()),
            ("Lead", "Lead", OPT_OUT_FIELD, _checkbox_metadata()),
        ]
        if self.has_email_message():
            wanted.append(("EmailMessage", "EmailMessage", EXTERNAL_ID, _external_id_metadata()))
        made, refused = [], []
        for sobject, owner, name, metadata in wanted:
            if name in self.fields(sobject):
                continue
            try:
                self.call(
                    "POST",
                    "tooling/sobjects/CustomField/",
                    body={"FullName": f"{owner}.{name}", "Metadata": metadata},
                )
                made.append(f"{owner}.{name}")
            except PermanentError as exc:
                if "DUPLICATE" in str(exc):
                    continue
                log.info("salesforce.setup_refused field=%s.%s error=%s", owner, name, exc)
                refused.append(f"{owner}.{name}")
        self.forget_fields()
        return made, refused


def _external_id_metadata() -> dict[str, Any]:
    return {
        "label": "Switchboard ID",
        "type": "Text",
        "length": 255,
        "externalId": True,
        "unique": True,
        "caseSensitive": False,
        "description": "Set by Switchboard so it never writes the same record twice.",
    }


def _checkbox_metadata() -> dict[str, Any]:
    return {
        "label": "SMS opt-out (Switchboard)",
        "type": "Checkbox",
        "defaultValue": "false",
        "description": "Checked when the person texted STOP (or a carrier reported an opt-out).",
    }


def _fitting(values: list[str], term: Callable[[str], str]) -> Iterator[list[str]]:
    """`values` in runs whose OR-ed search terms fit in FIND {...} (FIND_MAX_CHARS), in order."""
    run: list[str] = []
    length = 0
    for value in values:
        size = len(term(value)) + (4 if run else 0)  # " OR "
        if run and length + size > FIND_MAX_CHARS:
            yield run
            run, length = [], 0
            size = len(term(value))
        run.append(value)
        length += size
    if run:
        yield run


def _field_name(name: str, available: set[str]) -> str | None:
    """`name` as the org spells it: exactly, or as a custom field (csm_owner_id -> CSM_Owner_Id__c)."""
    if name in available:
        return name
    lowered = {f.lower(): f for f in available}
    return lowered.get(name.lower()) or lowered.get(name.lower() + "__c")


def _record_code(answer: dict[str, Any]) -> str:
    errors = answer.get("errors") or []
    return str(errors[0].get("statusCode") or errors[0].get("errorCode") or "") if errors else ""


def _ref(kind: str, result: dict[str, Any] | CrmError) -> CrmRef | CrmError:
    """A collection result as our CrmRef, or the error it carries in our taxonomy."""
    if isinstance(result, CrmError):
        return result
    if result.get("success") and result.get("id"):
        return CrmRef(kind, str(result["id"]))
    errors = result.get("errors") or [{}]
    code, message = _record_code(result), str(errors[0].get("message") or "Salesforce refused the record")
    fields = errors[0].get("fields") or []
    text = f"Salesforce {code}: {message}"[:500]
    if code in RETRYABLE_CODES:
        return RetryableError(text, retry_after=1.0)
    if code in GONE_CODES and ("WhoId" in fields or "ToIds" in fields):
        return ContactGone(text)
    return PermanentError(text)


def _in(values: Iterable[str]) -> str:
    return ", ".join(map(mapping.soql_quote, values))


def _code(exc: SalesforceError) -> str:
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode") or "")
    return ""


def _translate(exc: SalesforceError) -> CrmError:
    """simple-salesforce exception -> our taxonomy, with Salesforce's own errorCode and message."""
    status = int(getattr(exc, "status", 0) or 0)
    content = getattr(exc, "content", None)
    message = ""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        message = str(content[0].get("message") or "")
    code = _code(exc)
    text = f"Salesforce HTTP {status} {code}: {message}".strip()[:500]
    if code == "REQUEST_LIMIT_EXCEEDED":
        return Throttled(text, retry_after=LIMIT_RETRY_AFTER)
    if code in RETRYABLE_CODES or status >= 500 or status == 429:
        return RetryableError(text)
    return PermanentError(text)
