//! Opening a TAP device inside a given network namespace.
//!
//! A TAP device is created in the network namespace of the thread that calls `TUNSETIFF`,
//! and stays there; the file descriptor keeps working from any namespace afterwards. So
//! each device is opened on a short-lived helper thread that first `setns`es into the
//! target namespace: the process's other threads never leave their own namespace.
//!
//! The devices are not persistent (no `TUNSETPERSIST`): they vanish when the descriptor is
//! closed, so killing the delay line removes both of its interfaces.

use crate::Error;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (a `short`) at the
/// start of the union; the kernel copies `sizeof(struct ifreq)` = 40 bytes on Linux.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Checks an interface name the way the kernel will (`dev_valid_name`), so a bad name is
/// reported as such rather than as an opaque `EINVAL`.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::BadIfName(name.to_owned()))
    }
}

/// Resolves a namespace argument: a bare name means `ip netns`'s `/var/run/netns/NAME`,
/// anything with a `/` is taken as a path (e.g. `/proc/1234/ns/net`).
pub fn netns_path(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new("/var/run/netns").join(arg)
    }
}

/// Creates (or attaches to) the TAP device `name` in the calling thread's network
/// namespace, without packet-information header: each `read` returns one Ethernet frame
/// and each `write` must be one frame.
pub fn open_tap(name: &str) -> Result<File, Error> {
    validate_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(Error::TunOpen)?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    // validate_ifname bounded the length below IFNAMSIZ, so the name stays NUL-terminated.
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`; `req` is a live,
    // properly sized and aligned buffer for it, and the descriptor is open for the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut IfReqFlags,
        )
    };
    if rc < 0 {
        return Err(Error::TunSetIff {
            name: name.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// Moves the calling thread into the network namespace at `path`.
///
/// Only for threads that are discarded afterwards (or that should stay there): the
/// namespace is per thread, and nothing switches it back.
pub fn enter_netns(path: &Path) -> Result<(), Error> {
    let shown = path.display().to_string();
    let ns = File::open(path).map_err(|source| Error::NetnsOpen {
        path: shown.clone(),
        source,
    })?;
    // SAFETY: plain syscall on a descriptor we own for the duration of the call.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(Error::Setns {
            path: shown,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Opens TAP `name` inside the network namespace at `netns`, from a helper thread, so the
/// caller's own namespace is untouched. The returned descriptor works from anywhere.
pub fn open_tap_in_netns(netns: &Path, name: &str) -> Result<File, Error> {
    validate_ifname(name)?;
    let netns = netns.to_owned();
    let name = name.to_owned();
    std::thread::Builder::new()
        .name("delayline-open".into())
        .spawn(move || {
            enter_netns(&netns)?;
            open_tap(&name)
        })
        .map_err(|e| Error::Thread(e.to_string()))?
        .join()
        .map_err(|_| Error::Thread("helper thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        for good in ["tap0", "eth0", "tap-r1", "a23456789012345"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "a234567890123456"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespace_names_map_to_ip_netns_paths() {
        assert_eq!(netns_path("cb-r1"), Path::new("/var/run/netns/cb-r1"));
        assert_eq!(netns_path("/proc/1/ns/net"), Path::new("/proc/1/ns/net"));
    }
}
