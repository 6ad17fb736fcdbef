"""reconciler: keeps device-mapper thin devices equal to the spec files that describe them.

The package is layered (see docs/architecture.md): specs and config are parsed first, the store
persists, the states package holds each device's machine, reconcile decides, and dm is the
only code that talks to the kernel. The CLI sits on top of all of them.
"""

__version__ = "0.1.0"
