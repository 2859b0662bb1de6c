# The sidecar's warm yt-dlp pool (embedded in the binary, run as `python -c`, never on disk).
#
# Imports yt_dlp and does every job-independent thing once (extractor list and regexes,
# option parser, TLS context, ffmpeg detection, two whole extractions on a canned response),
# so that a job costs yt-dlp's per-URL work only, then keeps IDLE pre-forked workers blocked
# on the job socket (fd 3, SOCK_SEQPACKET, shared: each job message reaches one worker).
# Workers are double-forked, so their parent is the sidecar (a child subreaper): it sees
# their real exit status and reaps them. A worker that takes a job calls setsid (its own
# process group, killed as one on cancel), dup2s the pipes it got over SCM_RIGHTS onto
# 1, 2, 3, 4, acks its pid on the job's status socket, joins the job's network namespace
# (netns mode: the fd sent last), takes the job's rlimits and no_new_privs, becomes the
# job user if there is one (confine.rs: the forkserver keeps the sidecar's uid, which
# setns needs), moves into the job's own directory and runs yt_dlp.main(argv). Run as
# `python -I`: nothing is imported from a cwd.
#
# argv: IDLE FFMPEG_LOCATION ('' for none). cwd and environment are the jobs' own.
import ctypes
import fcntl
import functools
import gc
import inspect
import json
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback

JOB_FD = 3
REFILL_DELAY = 0.3  # seconds
PR_SET_NAME, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 15, 1, 38
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def set_name(name):
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def patch(yt_dlp):
    """Job-independent work memoised here runs once in this process, not once per job."""
    from yt_dlp import options
    from yt_dlp.networking import common

    YoutubeDL = sys.modules['yt_dlp.YoutubeDL']  # the module (the package exports the class)

    # Loading the CA store takes ~50 ms and is the same for every job.
    make = common.make_ssl_context
    sig = inspect.signature(make)

    @functools.lru_cache(maxsize=8)
    def cached(key):
        return make(**dict(key))

    def make_ssl_context(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return cached(tuple(bound.arguments.items()))

    common.make_ssl_context = make_ssl_context

    # Ordering ~1800 extractor names is quadratic (~40 ms per YoutubeDL): done once here.
    original = YoutubeDL.YoutubeDL.add_default_info_extractors
    chosen = {}

    def add_default_info_extractors(self):
        key = tuple(self.params.get('allowed_extractors', ['default']))
        if key not in chosen:
            chosen[key] = Extractors(self.params, original)
        chosen[key].add_to(self)

    YoutubeDL.YoutubeDL.add_default_info_extractors = add_default_info_extractors

    # Which extractor takes a URL: the first of ~1,900 whose `suitable` says yes, each asked
    # in turn (~8 ms, and a child's first touch of every extractor class copies ~1,000
    # pages). The answer comes from `Extractors.first_suitable` instead, which asks only
    # those the URL may suit; yt-dlp then takes that extractor exactly as its loop would.
    extract_info = YoutubeDL.YoutubeDL.extract_info
    signature = inspect.signature(extract_info)

    def extract_info_first_suitable(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = bound.arguments
        extractors = self.__dict__.get(Extractors.ATTR)
        if (extractors is not None and isinstance(arguments.get('url'), str)
                and not arguments.get('ie_key') and not arguments.get('force_generic_extractor')):
            arguments['ie_key'] = extractors.first_suitable(self._ies, arguments['url'])
        return extract_info(*bound.args, **bound.kwargs)

    YoutubeDL.YoutubeDL.extract_info = extract_info_first_suitable

    return options


class Extractors:
    """yt-dlp's default extractors for one `allowed_extractors`, worked out in the parent:
    the dict `add_default_info_extractors` would build (handed as it is to a child's first
    YoutubeDL: no copy touches ~1,900 classes) and what a URL must contain to suit each."""

    ATTR = '_sg_extractors'  # on a YoutubeDL whose `_ies` came from here

    def __init__(self, params, add_default):
        probe = type('Probe', (), {})()
        probe.params, probe.write_debug, seen = params, lambda *a, **k: None, []
        probe.add_info_extractor = seen.append
        add_default(probe)
        self.count = len(seen)
        self.ies = {}  # what `add_info_extractor` in turn gives, classes for the instances
        self.fresh = []  # (key, class) of the instances, made per YoutubeDL
        for ie in seen:
            key = ie.ie_key()
            if key in self.ies or any(k == key for k, _ in self.fresh):
                raise ValueError(f'extractor {key} twice')  # never in yt-dlp; not memoised
            self.ies[key] = ie if isinstance(ie, type) else type(ie)
            if not isinstance(ie, type):
                self.fresh.append((key, type(ie)))
        self.pristine = dict(self.ies)
        self.keys = tuple(self.ies)
        found = list(map(needs, self.ies.values()))
        # Copied in one go (one text as a str: `in` without a generator): a child touches
        # every one, and these fill a few pages instead of sharing hundreds with the parser's.
        self.needs = tuple(
            None if n is None else fresh(n[0]) if len(n) == 1 else tuple(map(fresh, n))
            for n in found)
        self.parent = os.getpid()

    def add_to(self, ydl):
        empty = not ydl._ies
        if empty and os.getpid() != self.parent and self.ies is not None:
            ydl._ies, self.ies = self.ies, None  # this process's copy, used once
        else:
            ydl._ies.update(self.pristine)
        for key, cls in self.fresh:
            ydl.add_info_extractor(cls())
        if empty:  # `_ies` holds exactly `self.keys`, in this order
            setattr(ydl, self.ATTR, self)
        ydl.write_debug(f'Loaded {self.count} extractors')

    def first_suitable(self, ies, url):
        """The key of the first extractor in `ies` whose `suitable(url)` is true, as
        yt-dlp's loop finds it; None when `ies` changed since (yt-dlp's loop decides)."""
        if len(ies) != len(self.keys):
            return None
        for i, need in enumerate(self.needs):
            if need is None or (need in url if need.__class__ is str
                                else any(text in url for text in need)):
                key = self.keys[i]
                if ies[key].suitable(url):
                    return key
        return None


def needs(ie):
    """Texts one of which a URL contains if `ie` suits it; None when unknown (ask `ie`).
    Known only for an extractor with the default `suitable`, which matches its regexes."""
    root = ie.__mro__[-2]  # InfoExtractor, or LazyLoadExtractor (below object)
    if (root.__dict__.get('suitable') is None
            or defined_by(ie, 'suitable') is not root.__dict__['suitable']
            or defined_by(ie, '_match_valid_url') is not root.__dict__.get('_match_valid_url')):
        return None
    if ie._VALID_URL is False:
        return ()  # never suitable
    if not isinstance(ie._VALID_URL, (str, tuple, list)):
        return None
    ie._match_valid_url('')  # compiles its regexes into `_VALID_URL_RE`, as its first use does
    texts = set()
    for regex in ie.__dict__['_VALID_URL_RE']:
        one_of = required_texts(regex)
        if one_of is None:
            return None
        texts |= one_of
    return tuple(sorted(texts))


def fresh(text):
    """A new copy of `text`, allocated now."""
    return text.encode().decode()


def defined_by(cls, name):
    return next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)


# Every web URL has these: requiring one tells nothing.
EVERY_URL = 'https://www.'


def required_texts(regex):
    """Texts one of which every match of `regex` contains (None if none is known), so that a
    URL containing none of them proves `regex.match(url)` fails. Read from the parsed regex:
    a run of literal characters in a sequence (through plain groups), or for an alternation
    one such text per branch; case-insensitive parts never count."""
    import re
    from re import _constants as c, _parser

    tree = _parser.parse(regex.pattern, regex.flags)
    if tree.state.flags & re.IGNORECASE:
        return None

    def score(one_of):
        return min((0 if t in EVERY_URL else len(t) for t in one_of), default=0)

    def sequence(items):
        """The best requirement of a sequence: each of its parts must match."""
        found, run = [], []

        def end_run():
            if run:
                found.append(frozenset([''.join(run)]))
                run.clear()

        def walk(items):
            for op, av in items:
                if op is c.LITERAL:
                    run.append(chr(av))
                    continue
                if op is c.SUBPATTERN and av[1] & re.IGNORECASE:
                    end_run()
                elif op is c.SUBPATTERN:  # (group, add_flags, del_flags, items)
                    inner = av[3].data
                    if len(inner) == 1 and inner[0][0] is c.BRANCH:
                        end_run()
                        found.append(alternation(inner[0][1][1]))
                    else:
                        walk(inner)
                elif op is c.BRANCH:
                    end_run()
                    found.append(alternation(av[1]))
                elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
                    end_run()
                    found.append(sequence(av[2].data))  # at least once
                else:
                    end_run()

        walk(items)
        end_run()
        # The later of equals: a host comes after the scheme.
        return max(reversed([f for f in found if f]), key=score, default=None)

    def alternation(branches):
        one_of = set()
        for branch in branches:
            best = sequence(branch.data)
            if best is None or score(best) < 3:
                return None
            one_of |= best
        return frozenset(one_of)

    best = sequence(tree.data)
    return best if best is not None and score(best) >= 3 else None


def warm(yt_dlp, ffmpeg):
    """Runs everything a job would run before its first request, so children inherit it."""
    import re

    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    import _strptime
    import yt_dlp.extractor._extractors  # noqa: F401 (every real extractor class, ~0.5 s)
    from yt_dlp.utils import unified_strdate, unified_timestamp

    # CPython keeps 512 compiled regexes; the ~1,900 URL patterns below would push out the
    # ones a job uses, which each job then compiled again (~5 ms).
    re._MAXCACHE = max(re._MAXCACHE, 1 << 14)
    options = patch(yt_dlp)
    YoutubeDL = sys.modules['yt_dlp.YoutubeDL']
    # yt-dlp tries ~60 date formats in turn; CPython keeps only 5 compiled (~50 ms a job).
    _strptime._CACHE_MAX_SIZE = 4096
    for date in ('Tue, 25 Nov 2025 15:54:00 GMT', '2025-11-25T15:54:00Z', '20251125'):
        unified_strdate(date)
        unified_timestamp(date)
    params = {'quiet': True, 'no_warnings': True, 'simulate': True, 'cachedir': False}
    if ffmpeg:
        params['ffmpeg_location'] = ffmpeg
    with YoutubeDL.YoutubeDL(params) as ydl:
        FFmpegPostProcessor.get_versions_and_features(ydl)
        ydl.get_info_extractor('Generic')
        for ie in ydl._ies.values():  # compiles every extractor's URL regex
            ie.suitable('http://127.0.0.1/warm.mp4')
        common = sys.modules['yt_dlp.networking.common']
        common.make_ssl_context()
    canned_jobs(yt_dlp, ffmpeg)
    yt_dlp.utils.system_identifier()  # cached; costs two subprocesses
    # Plugins were loaded above (HOME is the empty work dir); rescanning costs ~20 ms a job.
    YoutubeDL.load_all_plugins = yt_dlp._load_all_plugins = lambda: None
    # One pristine parser for all children: each uses it once, in its own copy of memory.
    parser = options.create_parser()
    options.create_parser = lambda: parser


def canned_jobs(yt_dlp, ffmpeg):
    """Runs a stream's extraction (`-J -f best`) and a resolve's (`-J`) of a media file
    whole, every request answered from memory (no socket): what a job does the first time
    only (regexes, imports, the selectors' parsing, caches) is then done for every child."""
    import io

    from yt_dlp.networking import common

    body = bytes.fromhex('00000018667479706d703432000000006d703432')  # an MP4 `ftyp` box

    def send(self, request):
        return common.Response(io.BytesIO(body), request.url, {
            'Content-Type': 'video/mp4', 'Content-Length': str(len(body)),
            'Accept-Ranges': 'bytes', 'Last-Modified': 'Tue, 25 Nov 2025 15:54:00 GMT'})

    handlers = list(common._REQUEST_HANDLERS.values())
    own = {h: h.__dict__['_send'] for h in handlers if '_send' in h.__dict__}
    base = ['--ignore-config', '--no-cache-dir', '--no-plugin-dirs', '--no-warnings', '-J']
    if ffmpeg:
        base += ['--ffmpeg-location', ffmpeg]
    try:
        for h in handlers:
            h._send = send
        for selector in (['-f', 'best'], []):
            code = run(yt_dlp, [*base, *selector, '--', 'http://127.0.0.1/warm.mp4'])
            if code != 0:
                print(f'forkserver: the warm-up extraction exited {code}', file=sys.stderr)
    finally:
        for h in handlers:
            if h in own:
                h._send = own[h]
            else:
                del h._send


def run(yt_dlp, argv):
    sys.argv = ['yt-dlp', *argv]
    try:
        yt_dlp.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    return code


def worker(yt_dlp, jobs, notify_w, intermediate, sidecar):
    while os.getppid() == intermediate:  # until re-parented to the sidecar
        time.sleep(0.0002)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != sidecar:
        os._exit(0)
    set_name(b'sg-idle')
    try:
        msg, fds, _, _ = socket.recv_fds(jobs, 1 << 20, 8)
    except OSError:
        os._exit(0)
    if not msg:
        os._exit(0)
    got = time.monotonic()
    os.write(notify_w, b'.')  # the forkserver forks a replacement
    os.setsid()
    job = json.loads(msg)
    status, pipes = fcntl.fcntl(fds[0], fcntl.F_DUPFD, 100), fds[1:]
    os.close(fds[0])  # the copy above 100 cannot be clobbered by the dup2s below
    netns = None
    if job.get('netns'):  # kept above the fds the pipes are dup2ed onto
        low = pipes.pop()
        netns = fcntl.fcntl(low, fcntl.F_DUPFD, 100)
        os.close(low)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in pipes]
    for fd in pipes:
        os.close(fd)
    jobs.close()
    os.close(notify_w)
    for fd, target in zip(high, job['fds']):
        os.dup2(fd, target)
        os.close(fd)
    set_name(b'yt-dlp')
    try:
        os.write(status, json.dumps({'pid': os.getpid(), 'got': got}).encode() + b'\n')
    except OSError:
        os._exit(1)
    if netns is not None:
        if libc.setns(netns, CLONE_NEWNET) != 0:
            print(f'ERROR: cannot join the job network namespace: errno {ctypes.get_errno()}',
                  file=sys.stderr, flush=True)
            os._exit(1)
        os.close(netns)
    try:  # the job's limits (confine.rs): after setns, which they do not hinder
        for name, soft, hard in job['limits']:
            resource.setrlimit(getattr(resource, 'RLIMIT_' + name), (soft, hard))
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'prctl(PR_SET_NO_NEW_PRIVS)')
        if job.get('user') is not None:  # last: the uid change clears the death signal
            uid, gid = job['user']
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != sidecar:
                os._exit(1)
        os.chdir(job['cwd'])  # as the job user: a directory it cannot reach fails here
    except (OSError, ValueError) as e:
        print(f'ERROR: cannot confine the job: {e}', file=sys.stderr, flush=True)
        os._exit(1)
    os.environ.update(job['env'])
    os._exit(run(yt_dlp, job['argv']))


def main():
    idle, ffmpeg = int(sys.argv[1]), sys.argv[2]
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # nothing the warm-up prints may reach a job's stdout
    import yt_dlp
    warm(yt_dlp, ffmpeg)
    set_name(b'sg-forkserver')  # after the warm-up jobs, which name the process yt-dlp
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)
    jobs = socket.socket(fileno=JOB_FD)
    notify_r, notify_w = os.pipe()
    sidecar = os.getppid()
    gc.collect()
    gc.freeze()  # children share these pages instead of copying them on the first GC

    def spawn_idle():
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(notify_r)
                intermediate = os.getpid()
                if os.fork() == 0:
                    worker(yt_dlp, jobs, notify_w, intermediate, sidecar)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    for _ in range(idle):
        spawn_idle()
    jobs.send(json.dumps({'ready': os.getpid(), 'yt_dlp': yt_dlp.version.__version__}).encode())
    # A fork competes with the job that was just taken for the CPU (and copies page tables):
    # while another worker is still idle, replacements wait until the job is under way.
    waiting, ready = 0, idle
    while True:
        timeout = None if waiting == 0 else (0 if ready == 0 else REFILL_DELAY)
        if select.select([notify_r], [], [], timeout)[0]:
            taken = os.read(notify_r, 64)
            if not taken:
                return
            waiting, ready = waiting + len(taken), ready - len(taken)
            if ready > 0:
                continue
        while waiting:
            spawn_idle()
            waiting, ready = waiting - 1, ready + 1


if __name__ == '__main__':  # `python -c`; tests load the functions alone
    main()
