"""containerd's snapshots API: the .proto files, and the Python modules generated from them by
scripts/gen-stubs with the oldest grpcio-tools we support (committed; see docs/architecture.md,
"The gRPC stubs")."""
