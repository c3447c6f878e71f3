"""What the exchange and its partners share, below any transport.

- ``exchange_protocol.pb``: the protobuf messages and gRPC stubs generated from
  ``proto/`` by ``scripts/gen_proto.py`` (never edited by hand);
- ``exchange_protocol.merkle``: RFC 6962 Merkle tree hashes and proofs;
- ``exchange_protocol.checkpoint``: the signed checkpoint note of the audit log.

Importing this package, ``merkle``, ``checkpoint`` or a ``*_pb2`` message module
loads neither grpc nor the SDK; only the ``*_pb2_grpc`` stub modules need grpc. The
server (``exchange``) and the SDK (``exchange_client``) both build on it.
"""

__all__: list[str] = []
