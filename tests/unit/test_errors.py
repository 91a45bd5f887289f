"""Every deadline in the harness raises a subclass of errors.Timeout, so
that one ``except Timeout`` catches any wait that ran out."""

import importlib
import inspect
import pkgutil

import harness
from harness.base.errors import Timeout


def harness_modules():
    yield harness
    for info in pkgutil.walk_packages(harness.__path__, 'harness.'):
        yield importlib.import_module(info.name)


def timeout_classes():
    for module in harness_modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and name.endswith('Timeout')
                    and issubclass(cls, BaseException)):
                yield cls


def test_every_timeout_derives_from_timeout():
    found = list(timeout_classes())
    assert {'WaitTimeout', 'LsiTimeout', 'AgentTimeout'} <= {cls.__name__ for cls in found}
    wrong = [f'{cls.__module__}.{cls.__qualname__}' for cls in found
             if not issubclass(cls, Timeout)]
    assert not wrong, f"not subclasses of harness.base.errors.Timeout: {wrong}"
