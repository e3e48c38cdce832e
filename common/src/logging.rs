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
pub fn open_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
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
