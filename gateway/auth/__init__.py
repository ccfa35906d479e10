"""Identities and authorization (#13): clients, OAuth tokens, SMART scopes, the access policy, the audit trail."""
