"""The guest side of the harness: images built from Debian packages
(image.py), the serial console (console.py) and SSH (ssh.py)."""
