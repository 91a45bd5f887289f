"""Build a QEMU with multi-process support, once per source and options.

Only ``qemu-system-x86_64`` is built (``ninja qemu-system-x86_64``), from
the tree a source spec names (harness/qemu/source.py), configured as
harness/qemu/configure.py says.  Results live in
``~/.cache/mpqemu-tests/qemu/<key>/`` (harness/qemu/buildcache.py) where
the key hashes the source's fingerprint and the options, so a second
request for the same thing returns in well under a second; a request for a
key that another process is building waits for it.  Compilation goes
through ccache (``…/mpqemu-tests/ccache``), so even a new key rebuilds
quickly.  ``build.log`` keeps the whole output; progress (ninja's
``[N/M]``) is reported every few seconds.

A built binary finds no firmware of its own (Debian's source drops the
blobs): :func:`harness.qemu.binary.probe` adds ``-L`` for Debian's
``seabios`` and ``qemu-system-data``, and the build checks that it did.

The command line (``make qemu``, ``make functional``) is
harness/tools/qemu_build.py.
"""

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..base import lifeline, paths
from ..base.errors import HarnessError
from . import binary as qemu_binary
from .buildcache import BuildError, cache_dir, digest, locked, run_step
from .configure import TARGET_LIST, build_python, configure_args, python_args
from .source import SourceSpec, fetch, parse_spec, resolve

LOG = logging.getLogger(__name__)

# Bumped whenever the build recipe changes in a way that changes binaries.
BUILD_FORMAT = 1
NINJA_TARGET = 'qemu-system-x86_64'
PROGRESS_INTERVAL_S = 5.0
CONFIGURE_TIMEOUT_S = 300
COMPILE_TIMEOUT_S = 1800
CCACHE_MAX_SIZE = '5G'


@dataclasses.dataclass
class BuildResult:
    spec: str
    key: str
    binary: str
    version: str                # QEMU's -version banner
    fingerprint: str
    configure_args: List[str]
    build_log: str
    build_s: float              # of the build that made it
    firmware_dirs: List[str]
    has_qtest: bool
    multiprocess_option: str
    # Size of the binary as the build left it; 0 in results written before
    # it was recorded.  A binary of another size was truncated (full disk)
    # or replaced since: the entry is rebuilt, never used.
    binary_bytes: int = 0
    cached: bool = False        # this request was served from the cache
    request_s: float = 0.0

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        del data['cached'], data['request_s']
        return data


def cache_key(fingerprint: str, extra_args: Sequence[str] = ()) -> str:
    """Build directory name for a source fingerprint and options."""
    return digest(str(BUILD_FORMAT), fingerprint, TARGET_LIST, NINJA_TARGET,
                  *extra_args)[:16]


def _load_result(key_dir: str) -> Optional[BuildResult]:
    path = os.path.join(key_dir, 'result.json')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        result = BuildResult(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not os.access(result.binary, os.X_OK):
        return None
    if result.binary_bytes and os.path.getsize(result.binary) != result.binary_bytes:
        LOG.warning("%s: %s has %d bytes, not the %d its build left: rebuilding",
                    key_dir, result.binary, os.path.getsize(result.binary), result.binary_bytes)
        return None
    return result


FEATURE_RE = re.compile(r'\+([a-z0-9][a-z0-9-]*)$')
# Debian packages a configure feature needs besides the usual build deps.
FEATURE_PACKAGES = {'vfio-user-server': ('libjson-c-dev', 'libcmocka-dev')}


def split_features(spec_text: str) -> Tuple[str, List[str]]:
    """``debian:trixie+vfio-user-server`` -> (``debian:trixie``,
    [``--enable-vfio-user-server``]): a qemu_src may ask for configure
    features by name, each part of the build's cache key."""
    features = []
    text = spec_text.strip()
    while not os.path.isdir(text) and FEATURE_RE.search(text):
        features.insert(0, FEATURE_RE.search(text).group(1))
        text = FEATURE_RE.sub('', text)
    return text, [f'--enable-{name}' for name in features]


def feature_packages(spec_text: str) -> List[str]:
    _, args = split_features(spec_text)
    return [p for a in args for p in FEATURE_PACKAGES.get(a[len('--enable-'):], ())]


def cached_result(spec_text: str, extra_args: Sequence[str] = ()) -> Optional[BuildResult]:
    """The cached build for a spec, or None; never builds or downloads
    (a git spec is never considered cached: resolving it fetches)."""
    spec_text, features = split_features(spec_text)
    extra_args = features + list(extra_args)
    try:
        spec = parse_spec(spec_text)
        if spec.kind == 'git':
            return None
        fingerprint, _ = resolve(spec, LOG.info)
    except HarnessError:
        return None
    return _load_result(cache_dir(cache_key(fingerprint, extra_args)))


class _Progress:
    """Turns ninja's ``[N/M] …`` lines into a line every few seconds."""

    def __init__(self, log: Callable[[str], None], interval_s: float = PROGRESS_INTERVAL_S):
        self.log = log
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last = 0.0

    def feed(self, line: str) -> None:
        match = re.match(r'^\[(\d+)/(\d+)\]', line)
        if not match:
            return
        done, total = int(match.group(1)), int(match.group(2))
        now = time.monotonic()
        if now - self.last >= self.interval_s or done == total:
            self.last = now
            self.log(f"  [{done}/{total}] {100 * done // max(total, 1)}% "
                     f"after {now - self.started:.0f} s")


def _stream(cmd: Sequence[str], *, cwd: str, env: Dict[str, str], log_file, timeout_s: float,
            progress: Optional[_Progress], what: str) -> None:
    """Run a long command, its output appended to the build log."""
    log_file.write(f'\n$ {shlex.join(cmd)}\n')
    log_file.flush()
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors='replace', preexec_fn=lifeline.preexec()) as proc:
        # A step that hangs without printing would keep the loop below
        # waiting for a line for ever: the timer kills it at the deadline.
        killer = threading.Timer(timeout_s, proc.kill)
        killer.daemon = True
        killer.start()
        try:
            for line in proc.stdout:
                log_file.write(line)
                if progress:
                    progress.feed(line)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise BuildError(f"{what} took longer than {timeout_s:.0f} s; see "
                                 f"{log_file.name}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
            log_file.flush()
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}); the end of "
                         f"{log_file.name}:\n{_tail(log_file.name)}")


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def _build_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop('VIRTUAL_ENV', None)
    # Our venv's bin must not shadow the Python/meson configure picks.
    env['PATH'] = os.pathsep.join(p for p in env.get('PATH', '').split(os.pathsep)
                                  if not os.path.exists(os.path.join(p, 'activate')))
    if shutil.which('ccache', path=env['PATH']):
        env['CC'] = 'ccache cc'
        env['CCACHE_DIR'] = env.get('CCACHE_DIR') or paths.machine_cache_dir('ccache')
        env['CCACHE_MAXSIZE'] = env.get('CCACHE_MAXSIZE') or CCACHE_MAX_SIZE
        # Builds of the same source in different key directories share objects.
        env['CCACHE_BASEDIR'] = paths.machine_cache_dir()
        env['CCACHE_NOHASHDIR'] = '1'
    return env


def build(spec_text: str, extra_args: Sequence[str] = (),
          log: Callable[[str], None] = print, force: bool = False) -> BuildResult:
    """Build (or find in the cache) QEMU from ``spec_text``."""
    started = time.monotonic()
    spec_text, features = split_features(spec_text)
    extra_args = features + list(extra_args)
    spec = parse_spec(spec_text)
    fingerprint, tree = resolve(spec, log)
    key = cache_key(fingerprint, extra_args)
    key_dir = cache_dir(key)
    with locked(key_dir + '.lock'):
        result = None if force else _load_result(key_dir)
        if result:
            result.cached = True
            result.request_s = round(time.monotonic() - started, 3)
            log(f"{spec}: cached build {result.binary} ({result.version}) "
                f"in {result.request_s:.2f} s")
            return result
        if tree is None:
            tree = fetch(spec, fingerprint, log)
        result = _build_tree(spec, tree, fingerprint, key, key_dir, extra_args, log)
    result.request_s = round(time.monotonic() - started, 3)
    return result


def _build_tree(spec: SourceSpec, tree: str, fingerprint: str, key: str, key_dir: str,
                extra_args: Sequence[str], log: Callable[[str], None]) -> BuildResult:
    built_at = time.monotonic()
    help_text = run_step([os.path.join(tree, 'configure'), '--help'], cwd=tree,
                         what=f'{tree}/configure --help')
    args = configure_args(help_text, tree, extra_args)
    python = build_python(tree, log)
    build_dir = os.path.join(key_dir, 'build')
    log_path = os.path.join(key_dir, 'build.log')
    os.makedirs(key_dir, exist_ok=True)
    env = _build_env()
    with open(os.path.join(key_dir, 'request.json'), 'w', encoding='utf-8') as f:
        json.dump({'spec': str(spec), 'tree': tree, 'fingerprint': fingerprint,
                   'configure_args': args, 'python': python, 'cc': env.get('CC', 'cc')},
                  f, indent=2)
    log(f"{spec}: building {NINJA_TARGET} from {tree} in {build_dir} (log: {log_path})")
    with open(log_path, 'a', encoding='utf-8') as log_file:
        configured = os.path.exists(os.path.join(build_dir, 'build.ninja'))
        if not configured:
            shutil.rmtree(build_dir, ignore_errors=True)
            os.makedirs(build_dir)
            log(f"  configure {' '.join(args)}")
            _stream([os.path.join(tree, 'configure'), *python_args(tree, python), *args],
                    cwd=build_dir, env=env, log_file=log_file, timeout_s=CONFIGURE_TIMEOUT_S,
                    progress=None, what=f'configure of {tree}')
        log(f"  configure done after {time.monotonic() - built_at:.0f} s; "
            f"ninja {NINJA_TARGET} ({os.cpu_count()} CPUs)")
        _stream(['ninja', '-C', build_dir, NINJA_TARGET], cwd=build_dir, env=env,
                log_file=log_file, timeout_s=COMPILE_TIMEOUT_S, progress=_Progress(log),
                what=f'ninja {NINJA_TARGET}')
    path = os.path.join(build_dir, NINJA_TARGET)
    caps = qemu_binary.probe(path, use_cache=False)
    caps.require_multiprocess()
    if not any(os.path.exists(os.path.join(d, qemu_binary.BIOS_FILE))
               for d in caps.data_dirs + caps.firmware_dirs):
        raise BuildError(f"{path} finds no {qemu_binary.BIOS_FILE}: install Debian's seabios "
                         f"and qemu-system-data (apt-get install seabios qemu-system-data)")
    result = BuildResult(spec=str(spec), key=key, binary=path, version=caps.version_string,
                         fingerprint=fingerprint, configure_args=args, build_log=log_path,
                         build_s=round(time.monotonic() - built_at, 1),
                         firmware_dirs=list(caps.firmware_dirs), has_qtest=caps.has_qtest,
                         multiprocess_option=args[1], binary_bytes=os.path.getsize(path))
    tmp = os.path.join(key_dir, f'result.json.{os.getpid()}')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(result.to_json(), f, indent=2)
    os.replace(tmp, os.path.join(key_dir, 'result.json'))
    log(f"{spec}: built {result.version} in {result.build_s:.0f} s: {path}")
    return result
