#!/bin/sh
# The image's command for a sidecar that runs in a container of its own (Kubernetes): the
# pinned yt-dlp, and a job work dir emptied first. The work dir sits on a volume that
# outlives a container restart, and the sidecar refuses a non-empty one (what jobs of a
# killed predecessor left behind). Arguments go to streamgate-sidecar.
set -eu
work_dir=${STREAMGATE_WORK_DIR:-/tmp/streamgate-jobs}
rm -rf -- "$work_dir"
yt_dlp=${STREAMGATE_YT_DLP:-/opt/yt-dlp/bin/yt-dlp}
exec streamgate-sidecar --work-dir "$work_dir" --yt-dlp "$yt_dlp" "$@"
