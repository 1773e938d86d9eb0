# NATS with JetStream on file storage, for `stream --nats` and `archive` (compose.yaml). The
# version Debian 12 ships, the one audit-tail is tested against.
FROM nats:2.9-alpine
CMD ["-js", "-sd", "/data"]
