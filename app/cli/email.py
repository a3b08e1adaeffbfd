"""`switchboard email`: a tenant's email providers (SendGrid, Mailgun) and the route token in their URLs."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli.common import provisioning, secret_option, settings
from app.core import db, mail, tenants
from connectors.clitools import refuse

group = AppGroup("email", help="A tenant's email providers: SendGrid and Mailgun webhooks.")

_ROUTE_HELP = (
    "Give the tenant a new route token (shown once; the old one stops working). Every email webhook URL of "
    "the tenant carries it as ?token=..."
)


def _urls(provider: str, token: str | None) -> None:
    base = settings().public_base_url or "https://HOST"
    shown = token or "<the tenant's route token>"
    for stream in ("inbound", "events"):
        click.echo(f"  {stream:8} {base.rstrip('/')}/webhooks/{provider}/{stream}?token={shown}")
    if token is None:
        click.echo("(route token unchanged; --route-token-new makes and shows a new one)")


@group.command("set-sendgrid")
@click.argument("tenant")
@secret_option(
    "--verification-key",
    envvar="SENDGRID_VERIFICATION_KEY",
    help="The Signed Event Webhook's verification key (base64 public key, as SendGrid shows it).",
)
@click.option("--route-token-new", is_flag=True, help=_ROUTE_HELP)
def set_sendgrid(tenant: str, verification_key: str, route_token_new: bool) -> None:
    """Store the tenant's SendGrid Event Webhook verification key (encrypted) and print its URLs."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        EventWebhook(verification_key.strip())
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(
            f"not a SendGrid verification key: {exc}", param_hint="--verification-key"
        ) from None
    token = None
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        mail.set_email_secret(s, row, "sendgrid_verification_key", verification_key.strip())
        if route_token_new or row.email_route_hash is None:
            token = mail.new_route_token(s, row)
    click.echo(f"SendGrid configured for {tenant}; point SendGrid at:")
    _urls("sendgrid", token)


@group.command("set-mailgun")
@click.argument("tenant")
@secret_option("--signing-key", envvar="MAILGUN_SIGNING_KEY", help="The domain's HTTP webhook signing key.")
@click.option("--route-token-new", is_flag=True, help=_ROUTE_HELP)
def set_mailgun(tenant: str, signing_key: str, route_token_new: bool) -> None:
    """Store the tenant's Mailgun webhook signing key (encrypted) and print its URLs."""
    token = None
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        mail.set_email_secret(s, row, "mailgun_signing_key", signing_key.strip())
        if route_token_new or row.email_route_hash is None:
            token = mail.new_route_token(s, row)
    click.echo(f"Mailgun configured for {tenant}; use:")
    _urls("mailgun", token)


@group.command("sendgrid-inbound-auth")
@click.argument("tenant")
@click.option("--new", "new", is_flag=True, help="Require basic auth; make and show new credentials (once).")
@click.option("--off", "off", is_flag=True, help="Stop requiring basic auth (the route token alone admits).")
def sendgrid_inbound_auth(tenant: str, new: bool, off: bool) -> None:
    """Require HTTP basic auth on the tenant's SendGrid Inbound Parse URL, or stop requiring it."""
    if new == off:
        raise click.UsageError("give exactly one of --new and --off")
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        if off:
            mail.clear_inbound_basic_auth(s, row)
        else:
            user, password = mail.new_inbound_basic_auth(s, row)
    if off:
        click.echo(f"{tenant}: Inbound Parse no longer needs basic auth")
        return
    base = (settings().public_base_url or "https://HOST").rstrip("/")
    scheme, _, host = base.partition("://")
    click.echo(
        f"{tenant}: Inbound Parse needs basic auth now. Set SendGrid's Destination URL to (shown once):"
    )
    click.echo(
        f"  {scheme}://{user}:{password}@{host}/webhooks/sendgrid/inbound?token=<the tenant's route token>"
    )


@group.command("sendgrid-inbound-signature")
@click.argument("tenant")
@secret_option(
    "--verification-key",
    envvar="SENDGRID_INBOUND_VERIFICATION_KEY",
    required=False,
    help="The Parse security policy's signature public_key (base64, as SendGrid returns it).",
)
@click.option("--off", "off", is_flag=True, help="Stop requiring the signature on Inbound Parse.")
def sendgrid_inbound_signature(tenant: str, verification_key: str | None, off: bool) -> None:
    """Require SendGrid's ECDSA signature (a Parse webhook security policy) on the tenant's Inbound Parse."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    if off == bool(verification_key):
        refuse("give exactly one of --verification-key and --off")
    if verification_key:
        try:
            EventWebhook(verification_key.strip())
        except (ValueError, TypeError) as exc:
            refuse(f"--verification-key is not a SendGrid verification key: {exc}")
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        if off:
            mail.clear_email_secret(s, row, "sendgrid_inbound_verification_key")
        else:
            mail.set_email_secret(
                s, row, "sendgrid_inbound_verification_key", (verification_key or "").strip()
            )
    state = "no longer needs" if off else "needs"
    click.echo(f"{tenant}: Inbound Parse {state} SendGrid's signature")


@group.command("set-sender")
@click.argument("tenant")
@click.option(
    "--provider", type=click.Choice(["sendgrid", "mailgun"]), required=True, help="Which API sends the email."
)
@secret_option(
    "--api-key",
    envvar="EMAIL_API_KEY",
    help="The provider's API key (SendGrid: with Mail Send; Mailgun: the domain's sending key).",
)
@click.option("--from", "from_", help="The tenant's From address, for steps whose owner has no address.")
@click.option("--mailgun-domain", help="Mailgun: the sending domain (e.g. mg.acme.example).")
@click.option(
    "--mailgun-region",
    type=click.Choice(["us", "eu"]),
    help="Mailgun: the domain's region (eu sends through api.eu.mailgun.net). Default: us.",
)
def set_sender(
    tenant: str,
    provider: str,
    api_key: str,
    from_: str | None,
    mailgun_domain: str | None,
    mailgun_region: str | None,
) -> None:
    """Store how the tenant sends email (the API key encrypted): send_email steps and POST /api/v1/emails."""
    if provider == "mailgun" and not mailgun_domain:
        raise click.BadParameter("Mailgun needs the sending domain", param_hint="--mailgun-domain")
    if from_ is not None and not mail.address(from_):
        raise click.BadParameter(f"not an email address: {from_!r}", param_hint="--from")
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        mail.set_email_secret(s, row, "send_provider", provider)
        mail.set_email_secret(s, row, f"{provider}_api_key", api_key.strip())
        if from_ is not None:
            mail.set_email_secret(s, row, "email_from", mail.address(from_) or "")
        if mailgun_domain:
            mail.set_email_secret(s, row, "mailgun_domain", mailgun_domain.strip().lower())
        if mailgun_region:
            mail.set_email_secret(s, row, "mailgun_region", mailgun_region)
    click.echo(f"{tenant} sends email through {provider}" + (f" from {from_}" if from_ else ""))


@group.command("resolve")
@click.argument("email_id")
@click.option("--sent", "sent", is_flag=True, help="It went out (seen in the provider's console): record it.")
@click.option("--resend", "resend", is_flag=True, help="It did not go out: send it again.")
def resolve(email_id: str, sent: bool, resend: bool) -> None:
    """Settle an email left "may have been sent" (our id sb..., or its interaction id)."""
    from app.channels import email as email_channel
    from jobs.automations import resolved_email_step

    if sent == resend:
        refuse("give exactly one of --sent and --resend")
    try:
        found = email_channel.undecided(email_id)
    except email_channel.NotResolvable as exc:
        refuse(str(exc))
    tenant = mail.tenant_by_id(found.tenant_id)
    email_channel.resolve(tenant, settings(), found, sent=sent)
    step = resolved_email_step(found.tenant_id, found.switchboard_id, sent=sent)
    what = "recorded as sent" if sent else "will be sent again"
    if step is not None:
        click.echo(f"email {found.switchboard_id} to {found.to} {what} (automation step {step})")
    elif sent:
        click.echo(f"email {found.switchboard_id} to {found.to} {what}")
    else:
        click.echo(
            f"email {found.switchboard_id} to {found.to} can be sent again: repeat its POST /api/v1/emails "
            "with the same Idempotency-Key"
        )


@group.command("opt-in")
@click.argument("address")
@click.option("--tenant", "tenant_name", help="The tenant (needed when several have opted the address out).")
def opt_in(address: str, tenant_name: str | None) -> None:
    """Let automated email go to an address again, after a bounce, a complaint or an unsubscribe."""
    wanted = mail.address(address)
    if not wanted:
        refuse(f"not an email address: {address!r}")
    if tenant_name:
        try:
            with db.transaction() as s:
                tenant_ids = [tenants.get_tenant(s, tenant_name).id]
        except tenants.ProvisioningError as exc:
            refuse(str(exc))
    else:
        tenant_ids = mail.tenants_opting_out(wanted)
        if len(tenant_ids) > 1:
            names = ", ".join(mail.tenant_by_id(t).name for t in tenant_ids)
            refuse(f"{wanted} is opted out by several tenants ({names}): give --tenant")
    reasons = [mail.opted_out(t, wanted) for t in tenant_ids]
    if not any(reasons):
        refuse(f"{wanted} is not opted out" + (f" of {tenant_name}" if tenant_name else ""))
    for tenant_id in tenant_ids:
        mail.opt_in(tenant_id, wanted)
    click.echo(
        f"{wanted} gets automated email again (the provider may still suppress it: remove it from SendGrid's "
        "suppression lists or Mailgun's bounces/complaints/unsubscribes too)"
    )


COMMANDS = [group]
