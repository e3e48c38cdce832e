//! The note left to a user whose server was ended (`--message`), in
//! `~/.vscode-server/ENDED-BY-ADMIN.txt`, where they will look when VS Code
//! reconnects to a fresh server and their terminals are gone.
//!
//! The janitor runs as root, in a directory the user controls. The file is
//! written by a thread that has taken on the user's filesystem identity
//! (fsuid/fsgid, no supplementary groups): the kernel then checks every step
//! as it would for the user, so a planted symlink or hard link can lead it
//! nowhere the user could not write anyway, and root-squashed NFS homes work.
//! On top of that the file itself is never a symlink (O_NOFOLLOW), never a
//! FIFO or device, never a second name of another file, and always the
//! user's own.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::duration;
use crate::judge::Why;

pub const DIR: &str = ".vscode-server";
pub const FILE: &str = "ENDED-BY-ADMIN.txt";
/// Servers listed one by one in a note; a user with thousands gets a count
/// for the rest (the log has every one).
const LISTED: usize = 20;

pub struct Ended<'a> {
    pub pid: i32,
    pub age: Duration,
    pub command: &'a str,
    pub why: Why,
}

fn explain(why: Why) -> &'static str {
    match why {
        Why::Reparented => "its ssh connection had ended",
        Why::NoSshSession => "you had no ssh session left on this node",
    }
}

/// The whole note: what, when, why, and the supported way instead.
pub fn compose(host: &str, when: &str, servers: &[Ended<'_>]) -> String {
    let (what, it) = if servers.len() == 1 { ("server was", "it") } else { ("servers were", "they") };
    let mut text = format!(
        "Your VS Code {what} ended on {host} by the administrators' janitor\n\
         on {when}, because {it} ran on the login node outside any Slurm job\n\
         and had been left behind:\n\n"
    );
    for s in servers.iter().take(LISTED) {
        let command: String = s.command.chars().take(100).collect();
        text.push_str(&format!("  pid {} (ran for {}): {command}\n", s.pid, duration::format(s.age)));
        text.push_str(&format!("      why: {} ({})\n", explain(s.why), s.why.text()));
    }
    if servers.len() > LISTED {
        text.push_str(&format!("  and {} more\n", servers.len() - LISTED));
    }
    text.push_str(&format!(
        "\n\
         Your files were not touched; the server and everything started from it\n\
         (terminals, tasks, extensions) were ended. VS Code starts a new server\n\
         when you connect again.\n\
         \n\
         Login nodes are shared: VS Code servers belong in a Slurm job, where they\n\
         get a compute node's CPUs, memory and GPUs and end with the job. The\n\
         supported way is a Remote-SSH host whose RemoteCommand is vscode-shim,\n\
         in an ssh config file of its own on your laptop, e.g.\n\
         ~/.ssh/vscode-slurm.config:\n\
         \n\
         \x20   Host {host}-vscode\n\
         \x20       HostName {host}\n\
         \x20       RemoteCommand vscode-shim -- --time=4:00:00\n\
         \n\
         with \"remote.SSH.configFile\" pointing at that file and\n\
         \"remote.SSH.enableRemoteCommand\": true in VS Code's settings; then connect\n\
         to {host}-vscode. Everything after -- describes the job (partition, GPUs, time),\n\
         as for sbatch.\n"
    ));
    text
}

/// `YYYY-MM-DD HH:MM:SS UTC` without a date library.
pub fn utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

/// Writes `text` as the note of the user `uid`/`gid` whose home is `home`.
pub fn write(home: &Path, uid: u32, gid: u32, text: &str) -> io::Result<PathBuf> {
    let home = home.to_owned();
    let text = text.to_owned();
    // Identity changes below are per thread: a thread of its own keeps the
    // rest of the janitor root. A node out of threads (a user's fork bomb)
    // fails this note, not the janitor: Builder, not thread::spawn.
    // The home is the user's: a path through their FUSE mount could stall
    // the write for ever, so the janitor waits a bounded time and moves on
    // (the stalled thread ends with the process).
    let (done, written) = std::sync::mpsc::sync_channel(1);
    thread::Builder::new().spawn(move || {
        let _ = done.send(write_as_user(&home, uid, gid, &text).map(|()| home.join(DIR).join(FILE)));
    })?;
    match written.recv_timeout(NOTE_WAIT) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the home did not answer within {NOTE_WAIT:?}"),
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(io::Error::other("the note writer panicked"))
        }
    }
}

/// How long writing one user's note may take: a local or NFS home answers
/// in milliseconds.
const NOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a stat we own.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, "fstat")?;
    Ok(st)
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: only called with a fresh fd the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn write_as_user(home: &Path, uid: u32, gid: u32, text: &str) -> io::Result<()> {
    // The raw syscall changes only this thread; glibc's setgroups() would change them all.
    // SAFETY: setgroups with a count of 0 reads no memory.
    let dropped = unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
    check(dropped as libc::c_int, "cannot drop supplementary groups")?;
    // SAFETY: setfsgid/setfsuid take ids only; an invalid id (-1) just reports the current one.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        if libc::setfsgid(u32::MAX) as u32 != gid || libc::setfsuid(u32::MAX) as u32 != uid {
            return Err(io::Error::other("cannot take on the user's file system identity"));
        }
    }

    let home_c =
        CString::new(home.as_os_str().as_bytes()).map_err(|_| io::Error::other("home has a NUL byte"))?;
    // SAFETY: a NUL-terminated path and flags.
    let home_fd = owned(check(
        unsafe { libc::open(home_c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) },
        &format!("cannot open {}", home.display()),
    )?);
    // A symlinked ~/.vscode-server (to scratch space, for quota) is common and,
    // with the user's identity, harmless to follow; the directory must be theirs.
    let dir_c = CString::new(DIR).map_err(io::Error::other)?;
    // SAFETY: a valid directory fd, a NUL-terminated name, flags.
    let dir_fd = owned(check(
        unsafe {
            libc::openat(
                home_fd.as_raw_fd(),
                dir_c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        },
        &format!("cannot open {}/{DIR}", home.display()),
    )?);
    if fstat(&dir_fd)?.st_uid != uid {
        return Err(io::Error::other(format!("{}/{DIR} does not belong to the user", home.display())));
    }
    let file_c = CString::new(FILE).map_err(io::Error::other)?;
    // O_NONBLOCK: a FIFO planted under the name must not hang the janitor.
    // No O_TRUNC: nothing is changed before the checks below pass.
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: a valid directory fd, a NUL-terminated name, flags and a mode.
    let file_fd = owned(check(
        unsafe { libc::openat(dir_fd.as_raw_fd(), file_c.as_ptr(), flags, 0o644 as libc::c_uint) },
        &format!("cannot open {}/{DIR}/{FILE} (a symlink is refused)", home.display()),
    )?);
    let st = fstat(&file_fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != uid || st.st_nlink != 1 {
        return Err(io::Error::other(format!(
            "{}/{DIR}/{FILE} is not a plain file of the user's own; not writing to it",
            home.display()
        )));
    }
    // SAFETY: a valid fd of a regular file.
    check(unsafe { libc::ftruncate(file_fd.as_raw_fd(), 0) }, "truncate")?;
    // The umask of cron's environment must not decide whether the user can read it.
    // SAFETY: a valid fd and a mode.
    check(unsafe { libc::fchmod(file_fd.as_raw_fd(), 0o644) }, "chmod")?;
    let mut file = File::from(file_fd);
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn the_note_says_what_when_why_and_the_way_instead() {
        let servers = [Ended {
            pid: 4242,
            age: Duration::from_secs(7_380),
            command: "/home/alice/.vscode-server/bin/abc/node out/server-main.js",
            why: Why::Reparented,
        }];
        let text = compose("login1", "2025-06-01 12:00:03 UTC", &servers);
        for wanted in [
            "Your VS Code server was ended on login1 by",
            "on 2025-06-01 12:00:03 UTC",
            "pid 4242 (ran for 2h03m): /home/alice/.vscode-server/bin/abc/node out/server-main.js",
            "(reparented to init)",
            "RemoteCommand vscode-shim -- --time=4:00:00",
            "    Host login1-vscode\n        HostName login1\n",
        ] {
            assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
        }
    }

    #[test]
    fn thousands_of_servers_make_a_short_note() {
        let servers: Vec<Ended<'_>> = (0..10_000)
            .map(|pid| Ended { pid, age: Duration::from_secs(60), command: "node", why: Why::NoSshSession })
            .collect();
        let text = compose("login1", "now", &servers);
        assert!(text.contains("  pid 19 (ran for "), "{text}");
        assert!(!text.contains("pid 20 "), "{text}");
        assert!(text.contains("  and 9980 more\n"), "{text}");
        assert!(text.len() < 4_096, "{} bytes", text.len());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(Duration::ZERO), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(Duration::from_secs(1_748_779_203)), "2025-06-01 12:00:03 UTC");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("janitor-note-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(DIR)).expect("scratch dir");
        dir
    }

    fn me() -> (u32, u32) {
        (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
    }

    #[test]
    fn writes_a_readable_file_and_replaces_an_old_one() {
        let home = scratch("plain");
        let (uid, gid) = me();
        let path = write(&home, uid, gid, "first, longer text\n").expect("write");
        assert_eq!(path, home.join(DIR).join(FILE));
        write(&home, uid, gid, "second\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(meta.uid(), uid);
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn refuses_symlinks_hard_links_and_fifos() {
        let (uid, gid) = me();
        let home = scratch("links");
        let target = home.join("target");
        std::fs::write(&target, "precious").unwrap();
        symlink(&target, home.join(DIR).join(FILE)).unwrap();
        assert!(write(&home, uid, gid, "x").is_err());
        std::fs::remove_file(home.join(DIR).join(FILE)).unwrap();
        std::fs::hard_link(&target, home.join(DIR).join(FILE)).unwrap();
        assert!(write(&home, uid, gid, "x").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        std::fs::remove_file(home.join(DIR).join(FILE)).unwrap();
        nix::unistd::mkfifo(&home.join(DIR).join(FILE), nix::sys::stat::Mode::from_bits_truncate(0o644))
            .unwrap();
        assert!(write(&home, uid, gid, "x").is_err());
        let _ = std::fs::remove_dir_all(&home);
        let missing = scratch("missing");
        std::fs::remove_dir(missing.join(DIR)).unwrap();
        assert!(write(&missing, uid, gid, "x").is_err());
        let _ = std::fs::remove_dir_all(&missing);
    }
}
