"""Harness-side drivers for emulated devices (run over pci.DeviceAccess)."""
