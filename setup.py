# Kept for pip versions that cannot do editable installs from setup.cfg alone.
from setuptools import setup

setup()
