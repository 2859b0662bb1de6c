//! What a job's processes (yt-dlp, ffmpeg) run under besides their directory and network:
//! resource limits (address space, CPU time, open files), `no_new_privs` (no setuid
//! program gives them more than the sidecar did) and, with `--job-user`, a uid and gid of
//! their own. Applied by a spawned child between fork and exec, and by a pool worker
//! (`python/forkserver.py`) before it runs its job, so every job process gets the same.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;

/// A job's limits; one for all jobs, from the sidecar's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// `RLIMIT_AS`, bytes. A pool worker starts from the forkserver's address space
    /// (≈ 80 MiB with yt-dlp imported), so this must leave room above that.
    pub address_space: u64,
    /// `RLIMIT_CPU`, seconds: SIGXCPU at this, SIGKILL a second later.
    pub cpu_secs: u64,
    /// `RLIMIT_NOFILE`: open descriptors.
    pub open_files: u64,
    /// Who the job's processes run as (`--job-user`); `None`: the sidecar's own uid.
    pub user: Option<JobUser>,
}

impl Confinement {
    /// `(name, soft, hard)` of each limit; the name is `RLIMIT_<name>` (for the pool's
    /// Python workers too, one source of truth).
    pub(crate) fn rlimits(&self) -> [(&'static str, u64, u64); 3] {
        [
            ("AS", self.address_space, self.address_space),
            ("CPU", self.cpu_secs, self.cpu_secs + 1),
            ("NOFILE", self.open_files, self.open_files),
        ]
    }

    /// Applies the limits, `no_new_privs` and the job user to the calling process, in that
    /// order: the limits and the flag are set while the process may still set them; the
    /// uid goes last. (A network namespace must be joined before: that needs root.)
    ///
    /// # Safety
    /// Async-signal-safe (setrlimit, prctl, setgroups, setgid, setuid): callable between
    /// fork and exec.
    pub(crate) unsafe fn apply(&self) -> std::io::Result<()> {
        for (name, soft, hard) in self.rlimits() {
            let resource = match name {
                "AS" => libc::RLIMIT_AS,
                "CPU" => libc::RLIMIT_CPU,
                _ => libc::RLIMIT_NOFILE,
            };
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: a plain syscall with a valid pointer.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        match self.user {
            // SAFETY: the caller's contract.
            Some(user) => unsafe { user.become_it() },
            None => Ok(()),
        }
    }
}

/// The uid and gid every job process runs as (`--job-user`), with no supplementary
/// groups: the sidecar's files, socket and config are not theirs to read, nor are the
/// sidecar's own processes theirs to signal or trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobUser {
    /// The jobs' uid.
    pub uid: u32,
    /// The jobs' gid (their only group).
    pub gid: u32,
}

/// Why `--job-user` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// Not `NAME`, `UID`, `NAME:GROUP` or `UID:GID`.
    #[error("{0:?} is not NAME|UID[:GROUP|GID]")]
    Syntax(String),
    /// No such user name in the user database.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// No such group name in the group database.
    #[error("no such group: {0}")]
    NoSuchGroup(String),
    /// A numeric uid without a user database entry, so without a primary group.
    #[error("uid {0} has no entry in the user database: give its group (UID:GID)")]
    NoGroup(u32),
    /// Jobs as uid or gid 0 would be the opposite of the flag's point.
    #[error("jobs must not run as root (uid or gid 0)")]
    Root,
    /// The sidecar cannot switch uids (not root, or the ids are not mapped in its user
    /// namespace).
    #[error("jobs cannot switch to uid {uid} gid {gid}: {why}")]
    CannotSwitch {
        /// The job uid.
        uid: u32,
        /// The job gid.
        gid: u32,
        /// What stands in the way.
        why: String,
    },
}

/// One side of a user spec: a number or a name.
#[derive(Debug, PartialEq, Eq)]
enum Id<'a> {
    Num(u32),
    Name(&'a str),
}

impl<'a> Id<'a> {
    fn parse(text: &'a str, spec: &str) -> Result<Id<'a>, UserError> {
        if text.is_empty() {
            return Err(UserError::Syntax(spec.to_owned()));
        }
        match text.bytes().all(|b| b.is_ascii_digit()) {
            true => text
                .parse()
                .map(Id::Num)
                .map_err(|_| UserError::Syntax(spec.to_owned())),
            false => Ok(Id::Name(text)),
        }
    }
}

/// `NAME|UID[:GROUP|GID]` split into its sides.
fn split(spec: &str) -> Result<(Id<'_>, Option<Id<'_>>), UserError> {
    let mut parts = spec.split(':');
    let user = Id::parse(parts.next().unwrap_or_default(), spec)?;
    let group = parts.next().map(|g| Id::parse(g, spec)).transpose()?;
    match parts.next() {
        Some(_) => Err(UserError::Syntax(spec.to_owned())),
        None => Ok((user, group)),
    }
}

impl FromStr for JobUser {
    type Err = UserError;

    /// `NAME`, `UID` (the group: the user's primary group), `NAME:GROUP`, `UID:GID`.
    fn from_str(spec: &str) -> Result<JobUser, UserError> {
        let (user, group) = split(spec)?;
        let (uid, primary) = match user {
            Id::Num(uid) => (
                uid,
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.gid.as_raw()),
            ),
            Id::Name(name) => {
                let found = nix::unistd::User::from_name(name).ok().flatten();
                let found = found.ok_or_else(|| UserError::NoSuchUser(name.to_owned()))?;
                (found.uid.as_raw(), Some(found.gid.as_raw()))
            }
        };
        let gid = match group {
            Some(Id::Num(gid)) => gid,
            Some(Id::Name(name)) => nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| UserError::NoSuchGroup(name.to_owned()))?
                .gid
                .as_raw(),
            None => primary.ok_or(UserError::NoGroup(uid))?,
        };
        if uid == 0 || gid == 0 {
            return Err(UserError::Root);
        }
        Ok(JobUser { uid, gid })
    }
}

impl JobUser {
    /// Whether this process can switch to the job user: root (euid 0) with both ids
    /// mapped in its user namespace. (Missing capabilities show in the start-up probe.)
    pub fn check_switchable(&self) -> Result<(), UserError> {
        let fail = |why: String| UserError::CannotSwitch {
            uid: self.uid,
            gid: self.gid,
            why,
        };
        // SAFETY: plain syscall.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(fail(format!(
                "the sidecar runs as uid {euid}, not root (--job-user needs real root)"
            )));
        }
        for (file, id, what) in [
            ("/proc/self/uid_map", self.uid, "uid"),
            ("/proc/self/gid_map", self.gid, "gid"),
        ] {
            let map = std::fs::read_to_string(file).map_err(|e| fail(format!("{file}: {e}")))?;
            if !mapped(&map, id) {
                return Err(fail(format!(
                    "{what} {id} is not mapped in the sidecar's user namespace ({file})"
                )));
            }
        }
        Ok(())
    }

    /// Becomes the job user: no supplementary groups, then the gid, then the uid (each
    /// needs the privilege the next one drops).
    ///
    /// # Safety
    /// Async-signal-safe (three syscalls): callable between fork and exec.
    unsafe fn become_it(&self) -> std::io::Result<()> {
        // SAFETY: plain syscalls; setgroups with a count of 0 reads no memory.
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(self.gid) == 0
                && libc::setuid(self.uid) == 0
        };
        match ok {
            true => Ok(()),
            false => Err(std::io::Error::last_os_error()),
        }
    }

    /// Why the job user cannot reach one of `paths`, each `(path, mode bits it needs, what
    /// for)`: every directory on the way must be searchable, through symlinks too. A hint
    /// for an error message; `None` when the mode bits allow it all (ACLs are not read).
    pub(crate) fn blocked(&self, paths: &[(&Path, u32, &str)]) -> Option<String> {
        for (path, want, what) in paths {
            let mut walks = vec![path.to_path_buf()];
            walks.extend(std::fs::canonicalize(path).ok().filter(|c| c != path));
            for walk in walks {
                let mut ancestors: Vec<&Path> = walk.ancestors().skip(1).collect();
                ancestors.reverse();
                for dir in ancestors {
                    if let Some(why) = self.denies(dir, 0o1, "search") {
                        return Some(why);
                    }
                }
                if let Some(why) = self.denies(&walk, *want, what) {
                    return Some(why);
                }
            }
        }
        None
    }

    /// `Some(reason)` when the mode bits of `path` deny the job user `want` (rwx as 0o4,
    /// 0o2, 0o1).
    fn denies(&self, path: &Path, want: u32, what: &str) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        (!allows(meta.mode(), meta.uid(), meta.gid(), *self, want)).then(|| {
            format!(
                "uid {} gid {} cannot {what} {} (mode {:04o}, owner {}:{})",
                self.uid,
                self.gid,
                path.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            )
        })
    }
}

/// Whether `mode` (owned by `owner`:`group`) grants `user` (no supplementary groups) every
/// bit of `want` (rwx as 0o4, 0o2, 0o1): the owner's bits, else the group's, else others'.
fn allows(mode: u32, owner: u32, group: u32, user: JobUser, want: u32) -> bool {
    let shift = if owner == user.uid {
        6
    } else if group == user.gid {
        3
    } else {
        0
    };
    (mode >> shift) & want == want
}

/// Whether `id` falls in one of the ranges of a `/proc/PID/{uid,gid}_map` text.
fn mapped(map: &str, id: u32) -> bool {
    map.lines().any(|line| {
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(nums[..], [inside, _, count] if inside <= u64::from(id) && u64::from(id) < inside + count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: JobUser = JobUser {
        uid: 65534,
        gid: 65534,
    };

    #[test]
    fn user_specs_split_into_their_sides() {
        assert_eq!(split("nobody").unwrap(), (Id::Name("nobody"), None));
        assert_eq!(split("65534").unwrap(), (Id::Num(65534), None));
        assert_eq!(
            split("sg-job:nogroup").unwrap(),
            (Id::Name("sg-job"), Some(Id::Name("nogroup")))
        );
        assert_eq!(
            split("1000:2000").unwrap(),
            (Id::Num(1000), Some(Id::Num(2000)))
        );
        for bad in ["", ":", "1000:", ":1000", "a:b:c", "99999999999"] {
            assert_eq!(split(bad), Err(UserError::Syntax(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn numeric_specs_need_no_database_and_never_give_root() {
        assert_eq!("65534:65534".parse(), Ok(NOBODY));
        assert_eq!(
            "1234:5678".parse(),
            Ok(JobUser {
                uid: 1234,
                gid: 5678
            })
        );
        assert_eq!("0:65534".parse::<JobUser>(), Err(UserError::Root));
        assert_eq!("65534:0".parse::<JobUser>(), Err(UserError::Root));
        // A uid no passwd line names has no primary group to take.
        assert_eq!(
            "3999999:x-no-such-group".parse::<JobUser>(),
            Err(UserError::NoSuchGroup("x-no-such-group".into()))
        );
        assert_eq!(
            "3999999".parse::<JobUser>(),
            Err(UserError::NoGroup(3999999))
        );
        assert_eq!(
            "x-no-such-user".parse::<JobUser>(),
            Err(UserError::NoSuchUser("x-no-such-user".into()))
        );
        assert_eq!("root".parse::<JobUser>(), Err(UserError::Root));
    }

    #[test]
    fn mode_bits_of_the_owner_else_the_group_else_others() {
        let other = |mode| allows(mode, 0, 0, NOBODY, 0o1);
        assert!(!other(0o700) && !other(0o750) && other(0o711) && other(0o755));
        assert!(allows(0o700, 65534, 0, NOBODY, 0o5));
        assert!(!allows(0o070, 65534, 65534, NOBODY, 0o1), "owner bits win");
        assert!(allows(0o750, 0, 65534, NOBODY, 0o5));
        assert!(!allows(0o744, 0, 0, NOBODY, 0o5), "read without execute");
    }

    #[test]
    fn ids_mapped_in_a_user_namespace() {
        let initial = "         0          0 4294967295\n";
        assert!(mapped(initial, 65534) && mapped(initial, 0));
        let own = "         0       1000          1\n";
        assert!(mapped(own, 0) && !mapped(own, 65534));
        let ranges = "0 100000 65536\n";
        assert!(mapped(ranges, 65535) && !mapped(ranges, 65536));
        assert!(!mapped("", 1));
    }
}
