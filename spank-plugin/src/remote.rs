//! Remote context (slurmstepd on the compute node): the job-scoped runtime
//! directory and the variables that tell the job helper where to bind and
//! where to keep its files.
//!
//! This runs from `init_post_opt`, not `user_init`: slurmstepd has already
//! dropped its effective uid to the user's when `user_init` runs, and creating
//! the root-owned base directory and handing a directory to the user both
//! need root. `init_post_opt` runs as root, once per step on each node, after
//! the step's options are known and before any task starts, so what is set
//! here reaches every task. Every nested `srun` of the job comes through here
//! again, so each action is idempotent.
//!
//! The base directory is root's and writable only by root, so no user can put
//! or swap anything directly inside it; the checks below keep it that way
//! (a symlink or a foreign owner is refused rather than "fixed").

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use slurm_spank::{spank_log, LogLevel, SpankHandle};
use vscode_slurm_protocol::env;

use crate::bind;
use crate::config::Config;
use crate::failure::Failure;

/// Runs for each step started with `--vscode`; an error fails the step.
pub fn prepare_step(spank: &SpankHandle, config: &Config, linger: Duration) -> Result<(), Failure> {
    let item_error = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(format!("vscode: cannot read the job's {what} from Slurm: {e}"))
    };
    let job_id = spank.job_id().map_err(|e| item_error("id", &e))?;
    let uid = spank.job_uid().map_err(|e| item_error("uid", &e))?;
    let gid = spank.job_gid().map_err(|e| item_error("gid", &e))?;

    // Resolve first: a misconfigured bind= should not leave directories behind.
    let addr = bind::resolve(&config.bind)?;
    ensure_base_dir(&config.runtime_dir)?;
    let job_dir = ensure_job_dir(&config.runtime_dir, job_id, uid, gid)?;

    let set = |name: &str, value: &std::ffi::OsStr| {
        spank.setenv(name, value, true).map_err(|e| {
            Failure::new(format!("vscode: job {job_id}: cannot set {name} in the step's environment: {e}"))
        })
    };
    set(env::BIND_ADDR, addr.to_string().as_ref())?;
    set(env::RUNTIME_DIR, job_dir.as_os_str())?;
    set(env::LINGER, linger.as_secs().to_string().as_ref())?;
    // env::JOB_END is not set: Slurm 22.05 gives plugins no end time (no
    // spank item, no SLURM_JOB_END_TIME), and asking slurmctld from every step
    // would cost an RPC per step.

    spank_log(
        LogLevel::Verbose,
        &format!("vscode: job {job_id}: doors listen on {addr}, runtime dir {}", job_dir.display()),
    );
    Ok(())
}

/// Where job `job_id` keeps its files.
pub fn job_dir_path(base: &Path, job_id: u32) -> PathBuf {
    base.join(job_id.to_string())
}

/// Creates the base directory (and missing parents) as root with mode 0755
/// and checks it is safe to create job directories in.
pub fn ensure_base_dir(base: &Path) -> Result<(), Failure> {
    create_root_dirs(base).map_err(|e| {
        Failure::new(format!(
            "vscode: cannot create the runtime directory {}: {e}; create it (root-owned, mode 0755) \
             or set runtime_dir= in plugstack.conf to a usable path",
            base.display()
        ))
    })?;
    check_base_dir(base)
}

/// The base directory must be a real directory, root's, and not writable by
/// anyone else; otherwise a user could plant a job directory or a symlink.
pub fn check_base_dir(base: &Path) -> Result<(), Failure> {
    let refuse = |why: String| {
        Failure::new(format!(
            "vscode: refusing to use runtime directory {}: {why}; fix it or set runtime_dir= in \
             plugstack.conf",
            base.display()
        ))
    };
    let meta = fs::symlink_metadata(base).map_err(|e| refuse(format!("cannot inspect it: {e}")))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if meta.uid() != 0 {
        return Err(refuse(format!("it is owned by uid {}, not root", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("it is writable by group or others (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok(())
}

/// Creates `<base>/<job_id>` for the job's user (mode 0700), or checks that
/// an existing one is a real directory of that user.
pub fn ensure_job_dir(base: &Path, job_id: u32, uid: u32, gid: u32) -> Result<PathBuf, Failure> {
    let path = job_dir_path(base, job_id);
    let fail =
        |why: String| Failure::new(format!("vscode: job {job_id}: job directory {}: {why}", path.display()));
    let created =
        create_owned_dir(base, &path, uid, gid).map_err(|e| fail(format!("cannot create it: {e}")))?;
    // O_NOFOLLOW + O_DIRECTORY: whatever is checked and changed below is the
    // directory itself, never something a link points to.
    let dir = open_dir_nofollow(&path).map_err(|e| {
        fail(format!(
            "exists but is not a plain directory ({e}); remove it if no job {job_id} is running here"
        ))
    })?;
    let meta = dir.metadata().map_err(|e| fail(format!("cannot inspect it: {e}")))?;
    if meta.uid() != uid {
        return Err(fail(format!(
            "exists but is owned by uid {}, not the job's uid {uid}; remove it if no job {job_id} is \
             running here",
            meta.uid()
        )));
    }
    if !created && meta.mode() & 0o7777 != 0o700 {
        dir.set_permissions(Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("cannot set its mode to 0700: {e}")))?;
    }
    Ok(path)
}

/// Makes `path` a directory of `uid`:`gid` with mode 0700, or finds it made
/// (`Ok(false)`). It is built under a name of its own and renamed into place
/// only once it is the user's, never replacing anything: steps of one job can
/// start at the same moment (seen in the lab with Slurm 26.05: a session's
/// batch step and its first `srun --overlap` step), and a step that saw the
/// directory between another step's mkdir and chown found it root's and
/// failed, which failed the batch step and drained the node.
fn create_owned_dir(base: &Path, path: &Path, uid: u32, gid: u32) -> io::Result<bool> {
    static ATTEMPT: AtomicU32 = AtomicU32::new(0);
    if fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Only root writes in the base directory, so nobody else can plant this name.
    let temp =
        base.join(format!(".{name}.{}.{}", std::process::id(), ATTEMPT.fetch_add(1, Ordering::Relaxed)));
    DirBuilder::new().mode(0o700).create(&temp)?;
    let made = open_dir_nofollow(&temp).and_then(|dir| {
        fchown(&dir, Some(uid), Some(gid))?;
        dir.set_permissions(Permissions::from_mode(0o700))?;
        rename_noreplace(&temp, path)
    });
    match made {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = fs::remove_dir(&temp);
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// rename(2) that fails with EEXIST instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether job `job_id` has a directory here, i.e. a `--vscode` step ran on
/// this node.
pub fn job_dir_exists(base: &Path, job_id: u32) -> bool {
    fs::symlink_metadata(job_dir_path(base, job_id)).is_ok()
}

/// Removes `<base>/<job_id>` and everything in it. `Ok(None)` when there is
/// nothing to remove.
pub fn remove_job_dir(base: &Path, job_id: u32) -> Result<Option<PathBuf>, Failure> {
    let path = job_dir_path(base, job_id);
    let fail = |why: String| Failure::new(format!("vscode: job {job_id}: {}: {why}", path.display()));
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("cannot inspect it: {e}"))),
    };
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(fail("not a plain directory, left alone".into()));
    }
    check_base_dir(base)?;
    // remove_dir_all does not follow symlinks inside the tree.
    fs::remove_dir_all(&path).map_err(|e| fail(format!("cannot remove it: {e}")))?;
    Ok(Some(path))
}

fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `mkdir -p` with every created directory set to 0755 whatever the umask,
/// so users can reach their job directories.
fn create_root_dirs(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_root_dirs(parent)?;
    }
    match DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => open_dir_nofollow(path)?.set_permissions(Permissions::from_mode(0o755)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory for one test; these tests need root (chown).
    fn scratch(name: &str) -> Option<PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("spank-vscode-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Some(dir)
    }

    #[test]
    fn creates_base_and_job_dir_idempotently() {
        let Some(root) = scratch("create") else { return };
        let base = root.join("a/b/runtime");
        ensure_base_dir(&base).unwrap();
        let meta = fs::symlink_metadata(&base).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
        assert_eq!(fs::symlink_metadata(root.join("a/b")).unwrap().mode() & 0o7777, 0o755);
        ensure_base_dir(&base).unwrap();

        let job = ensure_job_dir(&base, 42, 2001, 2002).unwrap();
        assert_eq!(job, base.join("42"));
        let meta = fs::symlink_metadata(&job).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (2001, 2002, 0o700));
        // Second step of the same job: accepted, mode restored.
        fs::set_permissions(&job, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(ensure_job_dir(&base, 42, 2001, 2002).unwrap(), job);
        assert_eq!(fs::symlink_metadata(&job).unwrap().mode() & 0o7777, 0o700);
        assert!(job_dir_exists(&base, 42));

        fs::write(job.join("file"), b"x").unwrap();
        assert_eq!(remove_job_dir(&base, 42).unwrap(), Some(job.clone()));
        assert!(!job_dir_exists(&base, 42));
        assert_eq!(remove_job_dir(&base, 42).unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }

    /// Steps of one job starting together all get the user's directory;
    /// none ever sees it root's (seen with Slurm 26.05 before the rename).
    #[test]
    fn concurrent_steps_of_a_job_all_find_the_users_directory() {
        let Some(root) = scratch("race") else { return };
        let base = root.join("runtime");
        ensure_base_dir(&base).unwrap();
        for job in 0..50 {
            let steps: Vec<_> = (0..4)
                .map(|_| {
                    let base = base.clone();
                    std::thread::spawn(move || ensure_job_dir(&base, job, 2001, 2002))
                })
                .collect();
            for step in steps {
                let dir = step.join().unwrap().unwrap_or_else(|e| panic!("job {job}: {e}"));
                let meta = fs::symlink_metadata(&dir).unwrap();
                assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (2001, 2002, 0o700));
            }
        }
        let left: Vec<_> = fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 50, "temporary directories left: {left:?}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_unsafe_base_dirs() {
        let Some(root) = scratch("base") else { return };
        fs::create_dir_all(&root).unwrap();
        let real = root.join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o755)).unwrap();
        let link = root.join("link");
        symlink(&real, &link).unwrap();
        assert!(ensure_base_dir(&link).unwrap_err().message().contains("symlink"));

        let file = root.join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_base_dir(&file).unwrap_err().message().contains("not a directory"));

        let foreign = root.join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::set_permissions(&foreign, Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&foreign, Some(2001), None).unwrap();
        assert!(ensure_base_dir(&foreign).unwrap_err().message().contains("owned by uid 2001"));

        let open = root.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_base_dir(&open).unwrap_err().message().contains("writable"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_foreign_or_linked_job_dirs() {
        let Some(root) = scratch("job") else { return };
        let base = root.join("runtime");
        ensure_base_dir(&base).unwrap();

        fs::create_dir(base.join("7")).unwrap();
        std::os::unix::fs::chown(base.join("7"), Some(3000), Some(3000)).unwrap();
        let err = ensure_job_dir(&base, 7, 2001, 2001).unwrap_err();
        assert!(err.message().contains("owned by uid 3000, not the job's uid 2001"), "{err}");

        let target = root.join("elsewhere");
        fs::create_dir(&target).unwrap();
        symlink(&target, base.join("8")).unwrap();
        let err = ensure_job_dir(&base, 8, 0, 0).unwrap_err();
        assert!(err.message().contains("not a plain directory"), "{err}");
        let err = remove_job_dir(&base, 8).unwrap_err();
        assert!(err.message().contains("left alone"), "{err}");
        assert!(target.is_dir());

        fs::write(base.join("9"), b"").unwrap();
        assert!(ensure_job_dir(&base, 9, 0, 0).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
