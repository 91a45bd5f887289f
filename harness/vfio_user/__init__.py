"""vfio-user spoken by the harness: a wire-level client of a remote's
``x-vfio-user-server``.

  protocol  the codec (docs/interop/vfio-user.rst) and its framing
  client    one connection: VERSION, DMA_MAP/UNMAP, region and IRQ info,
            SET_IRQS, REGION_READ/WRITE, DEVICE_RESET, every reply bounded
  access    a harness.devices DeviceAccess over the client and memfd RAM
  server    a remote LSI served over vfio-user and driven by the client,
            in one call (the counterpart of harness/mpqemu/fake_remote.py)
  fuzz/     the vfio-user families and remotes for the shared fuzzer
            (harness/fuzz)
"""
