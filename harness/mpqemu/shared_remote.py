"""One remote process given several devices, one harness connection each.

The multi-process series promised one device per remote process, so that
one VM's device could never reach another's RAM (hw/remote/remote-obj.c,
remote_object_class_init: ``max_devs = 1``).  ``launch()`` starts a remote
against that promise: the LSIs and server objects the test lists, in one
``-machine x-remote`` process (harness/mpqemu/remote.py's ``more_lsis``
and ``more_objects``), and connects the harness to every object: a
:class:`~harness.mpqemu.protocol.FakeProxy` on each ``x-remote-object``'s
socketpair, a :class:`~harness.vfio_user.client.VfioUserClient` to each
``x-vfio-user-server``.  Nothing is sent: whether an object answers is
the test's question (tests/functional/test_one_device.py).
"""

import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from ..devices import pci
from ..qemu.binary import Capabilities
from ..qemu.guestmem import GuestMemory
from ..vfio_user import protocol as vfu
from ..vfio_user.access import VfioUserAccess
from ..vfio_user.client import VfioUserClient
from .confinement import Confinement
from .protocol import FakeProxy, FakeProxyAccess, dialect_of
from .remote import PROXY, VFIO_USER, Remote, ServerObject
from .topology import short_socket_dir

NUM_BARS = 6


@dataclass
class Endpoint:
    """One server object of the remote and the harness's link to it."""
    object_id: str
    devid: str
    link: Union[FakeProxy, VfioUserClient]
    memory: GuestMemory = field(default_factory=GuestMemory)

    def access(self) -> pci.DeviceAccess:
        """Config space and BARs of the device this object serves, for
        :class:`~harness.devices.pci.PciFunction` (over vfio-user the
        version must have been negotiated first)."""
        if isinstance(self.link, FakeProxy):
            return FakeProxyAccess(self.link, self.memory)
        sizes = {i: self.link.region_info(i).size for i in range(NUM_BARS)}
        return VfioUserAccess(self.link, self.memory, {i: s for i, s in sizes.items() if s})

    def config_read(self, offset: int, size: int) -> int:
        """A config space read, over either transport."""
        if isinstance(self.link, FakeProxy):
            return self.link.config_read(offset, size)
        data = self.link.region_read(vfu.CONFIG_REGION_INDEX, offset, size)
        return int.from_bytes(data, 'little')

    def close(self) -> None:
        try:
            self.link.close()
        finally:
            self.memory.close()


@dataclass
class SharedRemote:
    remote: Remote
    endpoints: List[Endpoint]
    socket_dir: Optional[str] = None

    def __enter__(self) -> 'SharedRemote':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Hang up every link, make sure the process is gone."""
        try:
            for endpoint in self.endpoints:
                endpoint.close()
            self.remote.stop()
        finally:
            if self.socket_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)


def launch(caps: Capabilities, *, log_dir: str, transport: str,
           lsis: Sequence[Tuple[str, Optional[str]]], served: Sequence[str],
           timeout_s: float, extra_args: Sequence[str] = (),
           confinement: Optional[Confinement] = None) -> SharedRemote:
    """A remote emulating ``lsis`` (``(devid, drive)`` each) with one server
    object per entry of ``served`` (the devid it serves; the first serves
    the first LSI), each connected to.  ``timeout_s`` bounds every reply
    and, over vfio-user, each connect."""
    if not lsis or not served or served[0] != lsis[0][0]:
        raise ValueError("the first server object serves the first LSI")
    (devid, drive), more_lsis = lsis[0], list(lsis[1:])
    socket_dir = short_socket_dir() if transport == VFIO_USER else None
    ours: List[Optional[socket.socket]] = []
    objects: List[ServerObject] = []
    first_sock = first_path = None
    try:
        for index, target in enumerate(served, start=1):
            object_id = f'srv{index}-{target}'
            if transport == PROXY:
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                ours.append(mine)
                if index == 1:
                    first_sock = theirs
                else:
                    objects.append(ServerObject(object_id, target, sock=theirs))
            else:
                path = os.path.join(socket_dir, f'{object_id}.sock')
                if index == 1:
                    first_path = path
                else:
                    objects.append(ServerObject(object_id, target, socket_path=path))
        remote = Remote(devid, drive, args=extra_args, transport=transport,
                        socket_path=first_path, confinement=confinement,
                        more_lsis=more_lsis, more_objects=objects)
        remote.start(caps, log_dir, first_sock, timeout_s=timeout_s)
    except BaseException:
        for end in ours + [first_sock] + [obj.sock for obj in objects]:
            if end:
                end.close()
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    shared = SharedRemote(remote, [], socket_dir)
    try:
        ids = [f'{remote.devid}-obj' if transport == PROXY else f'{remote.devid}-vfu'] \
            + [obj.id for obj in objects]
        for index, (object_id, target) in enumerate(zip(ids, served)):
            if transport == PROXY:
                link = FakeProxy(ours[index], timeout_s=timeout_s, dialect=dialect_of(caps))
            else:
                path = first_path if index == 0 else objects[index - 1].socket_path
                link = VfioUserClient.connect(path, timeout_s)
            shared.endpoints.append(Endpoint(object_id, target, link))
    except BaseException:
        for end in ours[len(shared.endpoints):]:
            end.close()
        shared.close()
        raise
    return shared
