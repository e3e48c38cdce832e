//! Job runtime directories: `<runtime_dir>/<jobid>`, each a small tmpfs of
//! its own, mounted by the remote context and detached by the epilog.
//!
//! The directory is the user's to write in, and `/run` is shared by every job
//! and daemon on the node, so a plain directory there would let one user fill
//! `/run` for all (ENOSPC for systemd, sshd, munge) and leave the epilog a tree
//! of any depth and width to delete. A tmpfs of its own caps both bytes and
//! inodes (the user gets ENOSPC, `/run` is untouched), and the epilog only
//! detaches it: the kernel drops the whole tree, however deep, without anyone
//! walking it.
//!
//! Root works here on paths other users might try to redirect, so:
//! - the base directory is reached by walking from `/` one component at a
//!   time without following symlinks, and refused unless every component is
//!   root's and writable by no one else, so no user can swap anything on the
//!   way; everything later is done relative to the descriptor of that walk;
//! - the mount table, not the directory, says what is mounted on a job's
//!   directory (see `mounts`), so a user's FUSE mount there cannot hang root;
//! - creation happens under a lock file only root can open, so that steps of
//!   one job starting together mount once, and a user cannot stall them.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat, Flock, FlockArg, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmod, fstat, mkdirat, FileStat, Mode, SFlag};
use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::config::size_display;
use crate::failure::Failure;
use crate::mounts::{self, Mounted};

/// Taken only while a job directory is created and mounted (milliseconds);
/// a step that cannot get it in this time fails rather than hang slurmstepd.
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_POLL: Duration = Duration::from_millis(10);
/// In the base directory, where only root can create anything; job
/// directories are numbers, so it never names one.
const LOCK_FILE: &str = ".lock";
/// A user can stack FUSE mounts on their job directory (fusermount allows
/// 1000 by default); each detach removes the top one. Past this many the
/// directory is left mounted and logged.
const MAX_UNMOUNTS: usize = 1024;

/// The size of each job's tmpfs (plugstack `runtime_size=`, `runtime_inodes=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub bytes: u64,
    pub inodes: u64,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {} inodes", size_display(self.bytes), self.inodes)
    }
}

/// What to do about a missing component of the base directory's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Create it, root's and 0755 (remote context, as root).
    Create,
    /// Stop: there is nothing to check or remove below it (epilog, and
    /// salloc/sbatch as the user, who may also not be allowed to look).
    Stop,
}

/// The base directory (`runtime_dir=`), opened by a checked walk from `/`.
pub struct Base {
    dir: OwnedFd,
    path: PathBuf,
    /// Its file system, which a mounted job directory's is not.
    dev: u64,
}

/// What the epilog found to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Nothing,
    /// Removed after detaching this many mounts (1: our tmpfs).
    Removed {
        unmounts: usize,
    },
}

impl Base {
    /// Walks `path` from `/` without following symlinks and checks every
    /// component. `Ok(None)`: a component is missing (or, with
    /// [`Missing::Stop`], not visible to this user).
    pub fn open(path: &Path, missing: Missing) -> Result<Option<Base>, Failure> {
        let refuse = |component: &Path, why: String| {
            Failure::new(format!(
                "vscode: refusing runtime_dir={}: {} {why}; it and every directory above it must be a \
                 real directory (no symlink) owned by root and writable by no one else; fix that, or \
                 set runtime_dir= in plugstack.conf",
                path.display(),
                component.display()
            ))
        };
        let root = Path::new("/");
        if !path.is_absolute() {
            return Err(refuse(path, "is not a plain absolute path".into()));
        }
        let mut dir = open_at(None, root.as_os_str(), OFlag::O_PATH)
            .map_err(|e| refuse(root, format!("cannot be opened ({e})")))?;
        check_component(&dir).map_err(|why| refuse(root, why))?;
        let mut shown = root.to_path_buf();
        for component in path.components() {
            let name = match component {
                Component::RootDir => continue,
                Component::Normal(name) => name,
                _ => return Err(refuse(path, "is not a plain absolute path".into())),
            };
            shown.push(name);
            let next = match open_at(Some(&dir), name, OFlag::O_PATH) {
                Ok(next) => next,
                Err(Errno::ENOENT) if missing == Missing::Create => {
                    create_root_dir(&dir, name)
                        .map_err(|e| refuse(&shown, format!("cannot be created ({e})")))?;
                    open_at(Some(&dir), name, OFlag::O_PATH)
                        .map_err(|e| refuse(&shown, format!("cannot be opened ({e})")))?
                }
                Err(Errno::ENOENT | Errno::EACCES) if missing == Missing::Stop => return Ok(None),
                Err(e) => return Err(refuse(&shown, format!("cannot be opened ({e})"))),
            };
            check_component(&next).map_err(|why| refuse(&shown, why))?;
            dir = next;
        }
        let dev =
            fstat(dir.as_raw_fd()).map_err(|e| refuse(path, format!("cannot be inspected ({e})")))?.st_dev;
        Ok(Some(Base { dir, path: path.to_path_buf(), dev }))
    }

    /// Where job `job_id` keeps its files.
    pub fn job_path(&self, job_id: u32) -> PathBuf {
        self.path.join(job_id.to_string())
    }

    /// Whether job `job_id` has a directory here, i.e. a `--vscode` step ran
    /// on this node. Looks the name up only (O_PATH): nothing mounted on it
    /// is asked anything.
    pub fn has_job(&self, job_id: u32) -> bool {
        open_at(Some(&self.dir), OsStr::new(&job_id.to_string()), OFlag::O_PATH).is_ok()
    }

    /// Makes `<base>/<job_id>` the job's own tmpfs (owned by `uid`:`gid`,
    /// 0700, `limits`), or checks that it already is: every step of a job
    /// comes here, possibly several at once.
    pub fn ensure_job(&self, job_id: u32, uid: u32, gid: u32, limits: Limits) -> Result<PathBuf, Failure> {
        let path = self.job_path(job_id);
        let fail = |why: String| {
            Failure::new(format!("vscode: job {job_id}: runtime directory {}: {why}", path.display()))
        };
        let name = job_id.to_string();
        let name = OsStr::new(&name);
        let _lock = self
            .lock()
            .map_err(|why| fail(format!("cannot take {}/{LOCK_FILE}: {why}", self.path.display())))?;
        match mkdirat(Some(self.dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(format!("cannot create it: {e}"))),
        }
        // Only root can create entries in the base directory, so this is a
        // directory of ours or a leftover; O_PATH asks nothing of what is
        // mounted on it.
        let entry = open_at(Some(&self.dir), name, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(|e| {
            fail(format!("is not a plain directory ({e}); remove it if no job {job_id} runs here"))
        })?;
        match mounts::at(&path).map_err(|e| fail(format!("cannot read the mount table: {e}")))? {
            Mounted::Ours => {}
            Mounted::Nothing => {
                let options = format!(
                    "size={},nr_inodes={},mode=0700,uid={uid},gid={gid}",
                    limits.bytes, limits.inodes
                );
                // Through the descriptor: the mount lands on the directory
                // just opened, not on whatever the path names by now.
                let target = format!("/proc/self/fd/{}", entry.as_raw_fd());
                // nosuid, nodev: the user's files are never more than the
                // user's. noexec: only sockets live here, and a site that
                // mounts /tmp and /dev/shm noexec gets no new place to run
                // downloaded code from.
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                mount(Some(mounts::SOURCE), target.as_str(), Some("tmpfs"), flags, Some(options.as_str()))
                    .map_err(|e| fail(format!("cannot mount its tmpfs ({options}): {e}")))?;
            }
            Mounted::Other(what) => {
                return Err(fail(format!(
                    "{what}, not only this plugin's tmpfs; unmount it if no job {job_id} runs here"
                )))
            }
        }
        let top = open_at(Some(&self.dir), name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| fail(format!("cannot open it: {e}")))?;
        let stat = fstat(top.as_raw_fd()).map_err(|e| fail(format!("cannot inspect it: {e}")))?;
        let is_tmpfs = fstatfs(&top).map(|fs| fs.filesystem_type() == TMPFS_MAGIC).unwrap_or(false);
        if stat.st_dev == self.dev || !is_tmpfs {
            return Err(fail("is not a mounted tmpfs after mounting one".into()));
        }
        if stat.st_uid != uid {
            return Err(fail(format!(
                "is mounted but owned by uid {}, not the job's uid {uid}; unmount it if no job {job_id} runs here",
                stat.st_uid
            )));
        }
        // Its owner may have changed the mode; it is 0700 for every step.
        if stat.st_mode & 0o7777 != 0o700 {
            fchmod(top.as_raw_fd(), Mode::from_bits_truncate(0o700))
                .map_err(|e| fail(format!("cannot set its mode to 0700: {e}")))?;
        }
        Ok(path)
    }

    /// Detaches whatever is mounted on `<base>/<job_id>` (our tmpfs, and
    /// anything the user mounted on or in it) and removes the empty mount
    /// point. Never reads the tree: a lazy unmount cannot be held up by open
    /// files or a hung FUSE server, and the kernel frees the tmpfs once the
    /// last user of it is gone.
    pub fn remove_job(&self, job_id: u32) -> Result<Removed, Failure> {
        let path = self.job_path(job_id);
        let fail = |why: String| Failure::new(format!("vscode: job {job_id}: {}: {why}", path.display()));
        let name = job_id.to_string();
        // The last component is looked up in the base directory's
        // descriptor and never followed (UMOUNT_NOFOLLOW).
        let target = format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd());
        let mut unmounts = 0;
        while unmounts < MAX_UNMOUNTS {
            match umount2(target.as_str(), MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => unmounts += 1,
                // EINVAL: not (or no longer) a mount point.
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(e) => return Err(fail(format!("left in place: cannot unmount it: {e}"))),
            }
        }
        match unlinkat(Some(self.dir.as_raw_fd()), OsStr::new(&name), UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(Removed::Removed { unmounts }),
            Err(Errno::ENOENT) if unmounts == 0 => Ok(Removed::Nothing),
            Err(Errno::EBUSY) => Err(fail(format!("left in place: still mounted after {unmounts} unmounts"))),
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(fail(
                "left in place: a directory with files in it, not a mount (made before runtime \
                 directories were tmpfs mounts?); it is never emptied file by file, remove it by hand"
                    .into(),
            )),
            Err(e) => Err(fail(format!("left in place: cannot remove it: {e}"))),
        }
    }

    /// An exclusive lock on `<base>/.lock`, a file only root can open (so no
    /// user can hold it), waiting at most `LOCK_WAIT`.
    fn lock(&self) -> Result<Flock<OwnedFd>, String> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let raw = openat(Some(self.dir.as_raw_fd()), LOCK_FILE, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| e.to_string())?;
        // SAFETY: openat just returned this descriptor, and nothing else owns it.
        let mut file = unsafe { OwnedFd::from_raw_fd(raw) };
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) if Instant::now() < deadline => {
                    file = back;
                    std::thread::sleep(LOCK_POLL);
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(format!("still held after {} s", LOCK_WAIT.as_secs()))
                }
                Err((_, e)) => return Err(e.to_string()),
            }
        }
    }
}

/// The walk's check, also run as the user in salloc and sbatch: a layout the
/// login node already shows to be unsafe is refused before a job is queued.
/// Creates nothing.
pub fn check(path: &Path) -> Result<(), Failure> {
    Base::open(path, Missing::Stop).map(drop)
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`, owned.
fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
    let raw = openat(
        dir.map(AsRawFd::as_raw_fd),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A directory on the way to the job directories: itself, not a link to one
/// (O_PATH | O_NOFOLLOW opens a link as a link), and only root can change it.
fn check_component(dir: &OwnedFd) -> Result<(), String> {
    let stat: FileStat = fstat(dir.as_raw_fd()).map_err(|e| format!("cannot be inspected ({e})"))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFLNK {
        return Err("is a symbolic link".into());
    }
    if kind != SFlag::S_IFDIR {
        return Err("is not a directory".into());
    }
    if stat.st_uid != 0 {
        return Err(format!("is owned by uid {}, not root", stat.st_uid));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(format!("is writable by group or others (mode {:04o})", stat.st_mode & 0o7777));
    }
    Ok(())
}

/// mkdir as root, 0755 whatever the umask, so users can reach their job
/// directories below it. Someone else creating it first is fine: only root
/// can write in `parent`, and the caller checks what is there.
fn create_root_dir(parent: &OwnedFd, name: &OsStr) -> nix::Result<()> {
    match mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => {
            let created = open_at(Some(parent), name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
            fchmod(created.as_raw_fd(), Mode::from_bits_truncate(0o755))
        }
        Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::sync::{Arc, Barrier};

    const LIMITS: Limits = Limits { bytes: 1 << 20, inodes: 64 };

    /// Gives this test thread a mount namespace of its own, with a fresh
    /// root-owned 0755 tmpfs on /tmp, so mounts made here are seen by no other
    /// process and vanish with the thread. Needs root; `None` skips.
    fn private_tmp(name: &str) -> Option<PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            eprintln!("skipping: cannot make a mount namespace ({e})");
            return None;
        }
        let none = None::<&str>;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).unwrap();
        mount(Some("test"), "/tmp", Some("tmpfs"), MsFlags::empty(), Some("mode=0755")).unwrap();
        let dir = PathBuf::from("/tmp").join(name);
        fs::create_dir(&dir).unwrap();
        Some(dir)
    }

    fn refusal(path: &Path, missing: Missing) -> String {
        let message = Base::open(path, missing).err().expect("refused").message().to_owned();
        assert!(message.starts_with("vscode: refusing runtime_dir="), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        message
    }

    fn mode_of(path: &Path) -> (u32, u32, u32) {
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    }

    #[test]
    fn the_walk_refuses_links_foreign_owners_open_modes_and_files() {
        let Some(root) = private_tmp("walk") else { return };
        let real = root.join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, root.join("link")).unwrap();
        let message = refusal(&root.join("link/x"), Missing::Create);
        assert!(
            message.contains(&format!(": {} is a symbolic link;", root.join("link").display())),
            "{message}"
        );
        assert!(refusal(&root.join("link"), Missing::Stop).contains("is a symbolic link"));

        let alices = root.join("alices");
        fs::create_dir(&alices).unwrap();
        std::os::unix::fs::chown(&alices, Some(2001), Some(2001)).unwrap();
        let message = refusal(&alices.join("x/y"), Missing::Create);
        assert!(
            message.contains(&format!("{} is owned by uid 2001, not root", alices.display())),
            "{message}"
        );

        let shared = root.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(refusal(&shared.join("x"), Missing::Create)
            .contains("is writable by group or others (mode 1777)"));
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(refusal(&shared.join("x"), Missing::Stop).contains("(mode 0775)"));

        fs::write(root.join("file"), b"").unwrap();
        assert!(refusal(&root.join("file/x"), Missing::Create).contains("file is not a directory"));
        assert!(refusal(Path::new("relative/x"), Missing::Create).contains("is not a plain absolute path"));

        // Nothing was created beyond a refused component.
        for dir in [&real, &alices, &shared] {
            assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "{} was written to", dir.display());
        }
    }

    #[test]
    fn a_missing_base_is_created_root_0755_only_where_its_parent_passed() {
        let Some(root) = private_tmp("create") else { return };
        let base = root.join("a/b/runtime");
        assert!(Base::open(&base, Missing::Stop).unwrap().is_none());
        assert!(!root.join("a").exists(), "Missing::Stop created something");
        // Even with a umask that would keep users out of the job directories.
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
        let opened = Base::open(&base, Missing::Create);
        nix::sys::stat::umask(old);
        let opened = opened.unwrap().expect("created");
        for dir in [root.join("a"), root.join("a/b"), base.clone()] {
            assert_eq!(mode_of(&dir), (0, 0, 0o755), "{}", dir.display());
        }
        assert_eq!(opened.job_path(7), base.join("7"));
        assert!(Base::open(&base, Missing::Stop).unwrap().is_some());
        check(&base).unwrap();
    }

    #[test]
    fn a_job_directory_is_one_tmpfs_with_its_limits_however_often_it_is_made() {
        let Some(root) = private_tmp("job") else { return };
        let base = Base::open(&root.join("runtime"), Missing::Create).unwrap().unwrap();
        let before = nix::sys::statvfs::statvfs(&root).unwrap();
        let job = base.ensure_job(42, 2001, 2002, LIMITS).unwrap();
        assert_eq!(job, root.join("runtime/42"));
        assert_eq!(mounts::at(&job).unwrap(), Mounted::Ours);
        assert_eq!(mode_of(&job), (2001, 2002, 0o700));
        assert!(base.has_job(42) && !base.has_job(43));

        // A later step: the same mount, and the mode its owner changed is put back.
        fs::set_permissions(&job, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(base.ensure_job(42, 2001, 2002, LIMITS).unwrap(), job);
        assert_eq!(mounts::at(&job).unwrap(), Mounted::Ours);
        assert_eq!(mode_of(&job).2, 0o700);

        // Bytes: the writer gets ENOSPC at the limit (root too: tmpfs keeps no reserve).
        let err = fs::write(job.join("big"), vec![0u8; 2 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        fs::remove_file(job.join("big")).unwrap();
        // Inodes: the same.
        let made = (0..1000).take_while(|i| fs::write(job.join(format!("f{i}")), b"").is_ok()).count();
        assert!((60..64).contains(&made), "{made} files fit in 64 inodes");
        assert_eq!(fs::write(job.join("one-more"), b"").unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        // The file system the base lives on did not pay for any of it.
        let after = nix::sys::statvfs::statvfs(&root).unwrap();
        let used = (
            before.blocks_free().saturating_sub(after.blocks_free()),
            before.files_free().saturating_sub(after.files_free()),
        );
        assert!(used.0 < 8 && used.1 < 8, "the base's file system paid {used:?} (blocks, inodes)");

        assert_eq!(base.remove_job(42).unwrap(), Removed::Removed { unmounts: 1 });
        assert_eq!(mounts::at(&job).unwrap(), Mounted::Nothing);
        assert!(!job.exists() && !base.has_job(42));
        assert_eq!(base.remove_job(42).unwrap(), Removed::Nothing);
    }

    #[test]
    fn steps_starting_together_mount_once_and_all_succeed() {
        let Some(root) = private_tmp("race") else { return };
        let path = root.join("runtime");
        // Eight steps at once, for 20 jobs: the base directory and each job
        // directory are made by whichever step comes first.
        for job in 1..=20 {
            let barrier = Arc::new(Barrier::new(8));
            // Threads share this thread's mount namespace.
            let steps: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let base = Base::open(&path, Missing::Create)?.expect("created");
                        base.ensure_job(job, 2001, 2001, LIMITS)
                    })
                })
                .collect();
            for step in steps {
                assert_eq!(step.join().unwrap().unwrap(), path.join(job.to_string()));
            }
            let mounted = mounts::at(&path.join(job.to_string())).unwrap();
            assert_eq!(mounted, Mounted::Ours, "job {job}: mounted more than once");
        }
    }

    #[test]
    fn teardown_detaches_busy_and_stacked_mounts_without_reading_the_tree() {
        let Some(root) = private_tmp("teardown") else { return };
        let base = Base::open(&root.join("runtime"), Missing::Create).unwrap().unwrap();
        let job = base.ensure_job(5, 2001, 2001, LIMITS).unwrap();
        let deep = (0..40).fold(job.clone(), |dir, _| dir.join("d"));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("kept-open"), b"still here").unwrap();
        let open = fs::File::open(deep.join("kept-open")).unwrap();
        // What a user's FUSE mounts would be: one inside the tree, one on top of it.
        let none = None::<&str>;
        mount(Some("tmpfs"), &job.join("d"), Some("tmpfs"), MsFlags::empty(), none).unwrap();
        mount(Some("tmpfs"), &job, Some("tmpfs"), MsFlags::empty(), none).unwrap();
        assert!(matches!(mounts::at(&job).unwrap(), Mounted::Other(what) if what.starts_with("2 mounts")));
        assert!(base.ensure_job(5, 2001, 2001, LIMITS).unwrap_err().message().contains("2 mounts on it"));

        assert_eq!(base.remove_job(5).unwrap(), Removed::Removed { unmounts: 2 });
        assert!(!job.exists());
        let table = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(!table.contains(&job.display().to_string()), "{table}");
        // Detached, not destroyed under its last user.
        assert_eq!(std::io::read_to_string(open).unwrap(), "still here");
    }

    #[test]
    fn what_is_not_ours_is_refused_and_left_alone() {
        let Some(root) = private_tmp("foreign") else { return };
        let base_path = root.join("runtime");
        let base = Base::open(&base_path, Missing::Create).unwrap().unwrap();
        let elsewhere = root.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        symlink(&elsewhere, base_path.join("8")).unwrap();
        assert!(base
            .ensure_job(8, 2001, 2001, LIMITS)
            .unwrap_err()
            .message()
            .contains("is not a plain directory"));
        fs::write(base_path.join("9"), b"").unwrap();
        assert!(base.ensure_job(9, 2001, 2001, LIMITS).is_err());
        fs::create_dir(base_path.join("10")).unwrap();
        mount(Some("tmpfs"), &base_path.join("10"), Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        let err = base.ensure_job(10, 2001, 2001, LIMITS).unwrap_err();
        assert!(err.message().contains("1 mount on it, the top one tmpfs from tmpfs"), "{err}");
        // A mount of ours from an earlier job with the same id and another owner.
        base.ensure_job(11, 3000, 3000, LIMITS).unwrap();
        let err = base.ensure_job(11, 2001, 2001, LIMITS).unwrap_err();
        assert!(err.message().contains("owned by uid 3000, not the job's uid 2001"), "{err}");
        assert!(elsewhere.read_dir().unwrap().next().is_none());

        // A plain directory with files (an older plugin's): never emptied file by file.
        let legacy = base_path.join("12");
        fs::create_dir_all(legacy.join("sub")).unwrap();
        fs::write(legacy.join("sub/file"), b"x").unwrap();
        let err = base.remove_job(12).unwrap_err();
        assert!(err.message().contains("left in place: a directory with files in it"), "{err}");
        assert!(legacy.join("sub/file").exists());
        // The link is not followed: removing it would need unlink, and rmdir refuses.
        assert!(base.remove_job(8).is_err());
        assert!(elsewhere.is_dir());
    }
}
