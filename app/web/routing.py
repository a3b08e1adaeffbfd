"""Who should answer an incoming call: the matched contact's owner, else the tenant's default user."""

from __future__ import annotations

from sqlalchemy import select

from app.core import db
from app.core.models import Tenant, User
from app.core.phones import to_e164


def pick_user(tenant: Tenant, caller: str | None) -> User | None:
    """The user to ring for a call from `caller`; reads only our database, never a remote CRM."""
    from connectors import get_connector

    phone = to_e164(caller, tenant.region)
    owner_id = get_connector(tenant).owner_hint(phone) if phone else None
    with db.transaction() as s:
        reachable = select(User).where(User.tenant_id == tenant.id, User.phone.is_not(None))
        if owner_id:
            user = s.scalar(reachable.where(User.crm_owner_id == owner_id).order_by(User.id))
            if user is not None:
                return user
        return s.scalar(reachable.order_by(User.is_default.desc(), User.id))
