"""Build hook. The gRPC stubs of containerd's snapshots API are committed, not generated here
(scripts/gen-stubs makes them with the oldest grpcio-tools we support; docs/architecture.md
says why), so the build needs nothing beyond setuptools. Everything else about the package is
in pyproject.toml."""

from __future__ import annotations

from setuptools import setup

setup()
