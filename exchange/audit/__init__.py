"""The audit log: who submitted what, who received it and when, who asked for
what, who changed a credential; tamper-evident and verifiable by partners.

Split like trillian's personality and log:

- ``entries`` (the personality): what an entry says (``Event``, ``Action``) and its
  canonical bytes. Entries hold ids, digests and partner ids, never object bodies
  or secrets.
- the log: append-only, each entry committing to the previous one (``chain_hash``)
  and a Merkle tree over the entries (RFC 6962 / 9162), whose pure hashing and
  proofs live in the partner SDK (``exchange_protocol.merkle``) so that a partner
  verifies with exactly the code the exchange proves with;
  ``store`` appends entries (in the same transaction as the objects they record);
- ``signer``: the exchange's Ed25519 key and signed checkpoints (tree size, root);
- ``verify``: re-derives every hash and checks every checkpoint, offline.
"""
