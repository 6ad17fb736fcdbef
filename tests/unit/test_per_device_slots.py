"""The objects a daemon keeps one or more of per device are slotted: at 50,000 devices a
__dict__ each was about 100 bytes more per object, some 18 MB of the daemon's heap."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.dm import types as dm_types
from reconciler.specs import model
from reconciler.store.records import DeviceRecord

PER_DEVICE: list[type] = [
    dm_types.DeviceListing, dm_types.DeviceInfo, dm_types.TargetLine, dm_types.ThinTable,
    dm_types.ThinStatus, dm_types.KernelDevice, model.DeviceSpec, model.ParsedSpec,
    model.RejectedSpec, model.KnownDevice, DeviceRecord,
]


@pytest.mark.parametrize("cls", PER_DEVICE, ids=lambda c: c.__name__)
def test_a_per_device_class_has_no_instance_dict(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert "__slots__" in vars(cls)
    assert "__dict__" not in vars(cls)
    # No base gives its instances a __dict__ back.
    assert all("__dict__" not in vars(base) for base in cls.__mro__[1:-1])
