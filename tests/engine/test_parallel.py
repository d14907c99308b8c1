"""The device mesh: every process must own one of its devices. With 2 processes x 1 device, `num_devices=1` left
process 1 without a device, and it died deep in the first `device_get` with "Fetching value for `jax.Array` that
spans non-addressable devices"; now the mesh is refused at start-up with one line naming the field."""
from __future__ import annotations

import dataclasses

import jax
import pytest

from gazejax.engine import parallel


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int


def test_a_mesh_leaving_a_process_without_a_device_is_refused():
    devices = [FakeDevice(0, 0), FakeDevice(1, 0), FakeDevice(2, 1), FakeDevice(3, 1)]  # 2 processes x 2 devices
    for n in (1, 2):
        with pytest.raises(ValueError, match=rf"config\.num_devices={n}: processes \[1\] of 2 own none of the mesh's "
                                             rf"{n} devices; use 0 \(all devices\)") as err:
            parallel.make_mesh(n, devices=devices, process_count=2)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"config\.num_devices=5: only 4 devices are visible"):
        parallel.make_mesh(5, devices=devices, process_count=2)


def test_one_process_meshes_over_the_first_devices():
    assert parallel.make_mesh().devices.size == jax.device_count()
    assert list(parallel.make_mesh(1).devices) == jax.devices()[:1]
