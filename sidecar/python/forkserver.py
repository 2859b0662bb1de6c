# The sidecar's warm yt-dlp pool (embedded in the binary, run as `python -c`, never on disk).
#
# Imports yt_dlp and does every job-independent thing once (extractor list and regexes,
# option parser, TLS context, ffmpeg detection), then keeps IDLE pre-forked workers blocked
# on the job socket (fd 3, SOCK_SEQPACKET, shared: each job message reaches one worker).
# Workers are double-forked, so their parent is the sidecar (a child subreaper): it sees
# their real exit status and reaps them. A worker that takes a job calls setsid (its own
# process group, killed as one on cancel), dup2s the pipes it got over SCM_RIGHTS onto
# 1, 2, 3, 4, acks its pid on the job's status socket, joins the job's network namespace
# (netns mode: the fd sent last), moves into the job's own directory and runs
# yt_dlp.main(argv). Run as `python -I`: nothing is imported from a cwd.
#
# argv: IDLE FFMPEG_LOCATION ('' for none). cwd and environment are the jobs' own.
import ctypes
import fcntl
import functools
import gc
import inspect
import json
import os
import select
import signal
import socket
import sys
import time
import traceback

JOB_FD = 3
REFILL_DELAY = 0.3  # seconds
PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1
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

    # Ordering ~1800 extractor names is quadratic (~40 ms per YoutubeDL).
    original = YoutubeDL.YoutubeDL.add_default_info_extractors
    chosen = {}

    def add_default_info_extractors(self):
        key = tuple(self.params.get('allowed_extractors', ['default']))
        if key not in chosen:
            probe = type('Probe', (), {})()
            probe.params, probe.write_debug, seen = self.params, lambda *a, **k: None, []
            probe.add_info_extractor = seen.append
            original(probe)
            chosen[key] = seen
        for ie in chosen[key]:
            self.add_info_extractor(YoutubeDL.UnsupportedURLIE() if not isinstance(ie, type) else ie)

    YoutubeDL.YoutubeDL.add_default_info_extractors = add_default_info_extractors
    return options


def warm(yt_dlp, ffmpeg):
    """Runs everything a job would run before its first request, so children inherit it."""
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    import _strptime
    import yt_dlp.extractor._extractors  # noqa: F401 (every real extractor class, ~0.5 s)
    from yt_dlp.utils import unified_strdate, unified_timestamp

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
        fake = {'id': 'w', 'title': 'w', 'formats': [
            {'url': 'http://127.0.0.1/w.mp4', 'ext': 'mp4', 'format_id': '0'}]}
        ydl.process_ie_result(fake, download=False)
    yt_dlp.parse_options(['-q', '-o', '-', '-f', 'b', '--', 'http://127.0.0.1/w.mp4'])
    yt_dlp.utils.system_identifier()  # cached; costs two subprocesses
    # Plugins were loaded above (HOME is the empty work dir); rescanning costs ~20 ms a job.
    YoutubeDL.load_all_plugins = yt_dlp._load_all_plugins = lambda: None
    # One pristine parser for all children: each uses it once, in its own copy of memory.
    parser = options.create_parser()
    options.create_parser = lambda: parser


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
    os.chdir(job['cwd'])
    os.environ.update(job['env'])
    os._exit(run(yt_dlp, job['argv']))


def main():
    idle, ffmpeg = int(sys.argv[1]), sys.argv[2]
    set_name(b'sg-forkserver')
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # nothing the warm-up prints may reach a job's stdout
    import yt_dlp
    warm(yt_dlp, ffmpeg)
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


main()
