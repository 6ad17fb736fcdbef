"""Test support: stand-ins for the machine that the unit tier runs the product on.

Never imported by the product (an import-linter contract in pyproject.toml says so): the
product reaches these only through the seams it already has, a `Host` and the libdevmapper a
Host offers (`reconciler.dm.driver.make_client`).
"""
