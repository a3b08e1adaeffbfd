"""The provider-neutral core: settings, database, ledger, tenants, queue. No Flask, no providers."""
