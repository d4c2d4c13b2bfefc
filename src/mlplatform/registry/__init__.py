"""Registry: promotion gates, versions and aliases, the audit trail, promotion."""
