"""containerd's snapshots gRPC service, served over the Snapshotter (a proxy snapshotter)."""
