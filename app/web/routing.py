"""Who should answer an incoming call: the matched contact's owner, else the tenant's default user.

It reads only our own data (the connector's owner hint is a local cache or table), never a remote CRM:
the caller is waiting on the TwiML.
"""

from __future__ import annotations

from sqlalchemy import select

from app.core import db
from app.core.models import Tenant, User
from app.core.phones import to_e164
from connectors import get_connector
from webhooks.base import RoutedUser


def pick_user(tenant: Tenant, caller: str | None) -> RoutedUser | None:
    """The user to ring for a call from `caller`, or None when nobody with a phone can take it."""
    phone = to_e164(caller, tenant.region)
    owner_id = get_connector(tenant).owner_hint(phone) if phone else None
    with db.transaction() as s:
        reachable = select(User).where(User.tenant_id == tenant.id, User.phone.is_not(None))
        user = None
        if owner_id:
            user = s.scalar(reachable.where(User.crm_owner_id == owner_id).order_by(User.id))
        if user is None:
            user = s.scalar(reachable.order_by(User.is_default.desc(), User.id))
        return RoutedUser(user.id, user.phone) if user is not None and user.phone else None
