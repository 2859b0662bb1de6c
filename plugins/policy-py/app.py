"""policy-py: a streamgate policy plugin in Python (world `policy-plugin`, streamgate:plugin@0.1.0).

Serves a tenant's sealed links during service hours only, keeps download names short, and
refuses `/v1/resolve` (links are minted by the operator with `streamgate mint`).

Config (strings, from the tenant's `policy.config`):
- `hours`: the UTC service window `HH:MM-HH:MM`, e.g. `08:00-20:00`; an end before the start
  wraps past midnight (`22:00-06:00`); `24:00` ends at midnight. Unset: always open.
- `max_filename_length`: longer file names are cut to this many characters, extension kept.
  Unset: names are left alone.

Built with `componentize-py --stub-wasi`: the component imports nothing but the host's
`config`, `log` and `clock`, so `print`, files, sockets and `time` are not available here;
use `log.log` and `clock.now`.
"""

from wit_world import exports
from wit_world.exports.policy import Changes, Decision, Decision_Allow, Decision_Deny
from wit_world.imports import clock, config, log
from wit_world.imports.types import Denial, HttpRequest, StreamRequest

MINUTES_PER_DAY = 24 * 60


def deny(status: int, reason: str) -> Decision:
    log.log(log.Level.INFO, f"denied ({status}): {reason}")
    return Decision_Deny(Denial(status=status, reason=reason))


def minutes(text: str) -> int:
    """`HH:MM` → minutes after midnight; ValueError when it is not a time of day."""
    hours, _, mins = text.strip().partition(":")
    value = int(hours) * 60 + int(mins or "0")
    if not 0 <= value <= MINUTES_PER_DAY:
        raise ValueError(text)
    return value


def is_open(window: str, now: int) -> bool:
    start_text, _, end_text = window.partition("-")
    start, end = minutes(start_text), minutes(end_text)
    minute = now // 60 % MINUTES_PER_DAY
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


def shortened(filename: str, limit: int) -> str:
    """`filename` cut to `limit` characters, keeping its extension when there is room."""
    stem, dot, ext = filename.rpartition(".")
    if not dot or not stem or len(ext) + 2 > limit:
        return filename[:limit]
    return stem[: limit - len(ext) - 1] + "." + ext


class Policy(exports.Policy):
    def check(self, request: HttpRequest, wanted: StreamRequest) -> Decision:
        if request.method == "POST" or request.path.rstrip("/") == "/v1/resolve":
            return deny(403, "resolve is disabled for this tenant")

        window = config.get("hours")
        if window:
            try:
                open_now = is_open(window, clock.now())
            except ValueError:
                log.log(log.Level.ERROR, f"hours: {window!r} is not HH:MM-HH:MM")
                return deny(403, "service hours are misconfigured")
            if not open_now:
                return deny(403, f"outside service hours ({window} UTC)")

        changes = Changes(format=None, filename=None)
        limit = config.get("max_filename_length")
        if limit and wanted.filename:
            try:
                cut = shortened(wanted.filename, max(1, int(limit)))
            except ValueError:
                log.log(log.Level.ERROR, f"max_filename_length: {limit!r} is not a number")
                return deny(403, "filename limit is misconfigured")
            if cut != wanted.filename:
                log.log(log.Level.INFO, f"filename shortened to {cut!r}")
                changes.filename = cut
        return Decision_Allow(changes)
