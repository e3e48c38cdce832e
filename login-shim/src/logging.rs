//! Everything the shim writes to stderr goes through [`write_stderr`], so the
//! `--tee-stderr` copy matches what VS Code's log shows, whoever wrote it.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

static TEE_STDERR: OnceLock<Mutex<File>> = OnceLock::new();
static QUIET: AtomicBool = AtomicBool::new(false);

pub struct Options<'a> {
    pub verbose: u8,
    pub quiet: bool,
    pub log_file: Option<&'a Path>,
    pub tee_stderr: Option<&'a Path>,
}

pub fn init(options: Options<'_>) -> io::Result<()> {
    if let Some(path) = options.tee_stderr {
        let _ = TEE_STDERR.set(Mutex::new(open_private(path)?));
    }
    QUIET.store(options.quiet, Ordering::Relaxed);
    let level = match (options.quiet, options.verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(StderrSink)
        .with_ansi(false)
        .event_format(ShimPrefix)
        .with_filter(level);
    let file_layer = match options.log_file {
        Some(path) => Some(
            tracing_subscriber::fmt::layer()
                .with_writer(Mutex::new(open_private(path)?))
                .with_ansi(false)
                .with_filter(level.max(LevelFilter::INFO)),
        ),
        None => None,
    };
    let subscriber = tracing_subscriber::registry().with(stderr_layer).with(file_layer);
    tracing::subscriber::set_global_default(subscriber).map_err(io::Error::other)
}

/// Appends, so a fixed path shared by several sessions keeps all of them;
/// owner-only, because stdin carries the session's connection token.
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
        write_stderr(format!("vscode-shim: {message}\n").as_bytes());
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

/// Interleaved with salloc's own `salloc: ...` lines, so ours carry the
/// program name the same way instead of timestamps and levels.
struct ShimPrefix;

impl<S, N> FormatEvent<S, N> for ShimPrefix
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
        writer.write_str("vscode-shim: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
