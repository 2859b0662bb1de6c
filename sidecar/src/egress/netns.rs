//! Fail closed: each job gets a network namespace of its own whose only interface is its
//! loopback, holding one listener — the job's proxy. A process of the job that ignores
//! `--proxy` has nowhere to connect. Needs CAP_SYS_ADMIN: root, or the user namespace
//! [`enter_user_namespace`] makes at start; without it the sidecar runs in proxy mode.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};

use streamgate_protocol::EgressMode;

/// A job's network: its namespace (netns mode) and the proxy's listener inside it.
pub struct JobNet {
    /// The namespace the job's processes join (`setns`); `None` in proxy mode.
    pub ns: Option<OwnedFd>,
    /// Bound to 127.0.0.1 of the job's namespace (or of the sidecar's, in proxy mode).
    pub listener: TcpListener,
}

impl JobNet {
    /// A fresh namespace and listener (netns), or a listener on the sidecar's loopback.
    pub fn new(mode: EgressMode) -> std::io::Result<JobNet> {
        match mode {
            EgressMode::Proxy => Ok(JobNet {
                ns: None,
                listener: TcpListener::bind("127.0.0.1:0")?,
            }),
            EgressMode::Netns => {
                // unshare(CLONE_NEWNET) moves the calling thread only: a short-lived thread
                // makes the namespace, so no runtime thread ever leaves the sidecar's.
                let made = std::thread::Builder::new()
                    .name("sg-netns".into())
                    .spawn(new_namespace)?
                    .join()
                    .map_err(|_| std::io::Error::other("netns thread panicked"))??;
                Ok(JobNet {
                    ns: Some(made.0),
                    listener: made.1,
                })
            }
        }
    }
}

/// Which mode this process can run in: netns if a namespace can be made now.
pub fn probe() -> Result<EgressMode, std::io::Error> {
    JobNet::new(EgressMode::Netns).map(|_| EgressMode::Netns)
}

fn new_namespace() -> std::io::Result<(OwnedFd, TcpListener)> {
    // SAFETY: plain syscall on this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    loopback_up()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let ns = File::open("/proc/thread-self/ns/net")?;
    Ok((ns.into(), listener))
}

/// `ip link set lo up`, by ioctl: a new namespace's loopback starts down.
fn loopback_up() -> std::io::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| {
        // No address is needed to configure an interface; binding just gives us an fd.
        std::net::UdpSocket::bind("[::]:0")
    })?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: ioctls on our own socket with a correctly sized, initialised ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// For a sidecar that is not root: becomes root of a new user namespace (mapping only its
/// own uid and gid), which lets it make network namespaces. Must run while the process has
/// one thread (before the async runtime starts); a kernel that forbids unprivileged user
/// namespaces leaves everything as it was.
pub fn enter_user_namespace() -> std::io::Result<()> {
    // SAFETY: plain syscalls; the process is single-threaded here (the caller's contract).
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        return Ok(());
    }
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(())
}

/// Joins `ns` (a namespace fd): called in a job's child between fork and exec.
///
/// # Safety
/// Only async-signal-safe work: one syscall.
pub unsafe fn join(ns: i32) -> std::io::Result<()> {
    // SAFETY: setns on an fd the caller keeps open.
    if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
