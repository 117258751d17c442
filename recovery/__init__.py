"""Signed recovery playbooks: keys, keyring, verification, the executor and the audit chain.

Filled in by the recovery-playbooks issue.
"""
