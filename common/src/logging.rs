//! stderr reaches VS Code's log through ssh (and, from the helper, through
//! srun and the shim), mixed with Slurm's own `salloc: ...` lines; ours carry
//! the program's name the same way instead of timestamps. Everything written
//! to stderr goes through [`write_stderr`], so a `--tee-stderr` copy matches
//! what VS Code's log shows, whoever wrote it.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::expand_pid;

static TEE_STDERR: OnceLock<Mutex<File>> = OnceLock::new();
static QUIET: AtomicBool = AtomicBool::new(false);
static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// The logging options both programs take.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also log to this file (at least info level); %p becomes the pid.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// How a program's lines look.
pub struct Style {
    /// The name every line starts with.
    pub program: &'static str,
    /// `error: ` and `warning: ` after the name: the helper's lines reach
    /// the user mixed with Slurm's, where they must stand out; the shim's
    /// errors are the session's last line and read as such.
    pub label_levels: bool,
}

/// `-q` errors only, default warnings, each `-v` one level more. A log file
/// gets at least info, since nobody reads it unless something went wrong.
/// The error names the file that could not be opened.
pub fn init(args: &LogArgs, style: Style, tee_stderr: Option<&Path>) -> Result<(), String> {
    let open = |path: &Path, what: &str| {
        let path = expand_pid(path);
        open_private(&path).map_err(|e| format!("cannot open the {what} {}: {e}", path.display()))
    };
    if let Some(path) = tee_stderr {
        let _ = TEE_STDERR.set(Mutex::new(open(path, "--tee-stderr file")?));
    }
    let log_file = args.log_file.as_deref().map(|path| open(path, "log file")).transpose()?;
    let _ = PROGRAM.set(style.program);
    QUIET.store(args.quiet, Ordering::Relaxed);
    let level = match (args.quiet, args.verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    let prefixed = Prefixed { program: style.program, label_levels: style.label_levels };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(StderrSink)
        .with_ansi(false)
        .event_format(prefixed)
        .with_filter(level);
    let file_layer = log_file.map(|file| {
        tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .with_filter(level.max(LevelFilter::INFO))
    });
    let subscriber = tracing_subscriber::registry().with(stderr_layer).with(file_layer);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())
}

/// Appends, so a fixed path shared by several sessions keeps all of them;
/// owner-only, because the streams carry the session's connection token and
/// the log names endpoints.
///
/// Paths like `/tmp/shim-%p.log` are guessable, so another user may have
/// put something there first: a link (to a file of theirs, which would then
/// receive the token) or a file of their own. Neither is written: a link is
/// not followed, and a file must be a regular file of ours with no other
/// name. A new file is created 0600.
pub fn open_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("it is a symbolic link; name a file of your own"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    // SAFETY: getuid cannot fail and touches no memory.
    let me = unsafe { libc::getuid() };
    if !meta.file_type().is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "it belongs to uid {}, not to you; name a file of your own",
            meta.uid()
        )));
    }
    if meta.nlink() != 1 {
        return Err(io::Error::other("it has other names (hard links); name a file of your own"));
    }
    Ok(file)
}

/// Writes to our stderr and the tee; failures are ignored because there is
/// nowhere left to report them.
pub fn write_stderr(bytes: &[u8]) {
    let _ = io::stderr().lock().write_all(bytes);
    if let Some(tee) = TEE_STDERR.get() {
        if let Ok(mut file) = tee.lock() {
            let _ = file.write_all(bytes);
        }
    }
}

/// For progress the user should see by default although nothing is wrong;
/// only `-q` silences it.
pub fn progress(message: fmt::Arguments<'_>) {
    if !QUIET.load(Ordering::Relaxed) {
        let program = PROGRAM.get().copied().unwrap_or("vscode-slurm");
        write_stderr(format!("{program}: {message}\n").as_bytes());
    }
}

struct StderrSink;

struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stderr(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StderrSink {
    type Writer = StderrWriter;

    fn make_writer(&'a self) -> StderrWriter {
        StderrWriter
    }
}

struct Prefixed {
    program: &'static str,
    label_levels: bool,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(self.program)?;
        writer.write_str(": ")?;
        if self.label_levels {
            match *event.metadata().level() {
                Level::ERROR => writer.write_str("error: ")?,
                Level::WARN => writer.write_str("warning: ")?,
                _ => {}
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::open_private;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vscode-slurm-open-private-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_file_is_ours_alone_and_appended_to() {
        let dir = scratch("new");
        let path = dir.join("log");
        std::io::Write::write_all(&mut open_private(&path).unwrap(), b"one\n").unwrap();
        std::io::Write::write_all(&mut open_private(&path).unwrap(), b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn planted_links_fifos_and_foreign_files_are_refused_untouched() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, "theirs").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
        let why = open_private(&dir.join("link")).unwrap_err().to_string();
        assert!(why.contains("symbolic link"), "{why}");
        std::fs::hard_link(&victim, dir.join("hard")).unwrap();
        let why = open_private(&dir.join("hard")).unwrap_err().to_string();
        assert!(why.contains("other names"), "{why}");
        let fifo = dir.join("fifo");
        let fifo_c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a valid C string and a mode.
        assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
        assert!(open_private(&fifo).is_err(), "a FIFO would block or leak");
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } == 0 {
            let foreign = dir.join("foreign");
            std::fs::write(&foreign, "").unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
            let why = open_private(&foreign).unwrap_err().to_string();
            assert!(why.contains("belongs to uid 65534"), "{why}");
            assert_eq!(std::fs::metadata(&foreign).unwrap().len(), 0);
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "theirs");
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
