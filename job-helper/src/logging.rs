//! stderr reaches VS Code's log through srun, salloc and the shim, mixed with
//! their lines; ours carry the program name there, and stay quiet unless
//! something needs the user's attention.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub const PREFIX: &str = "vscode-job-helper: ";

/// `-q` errors only, default warnings, each `-v` one level more. A log file
/// gets at least info, since nobody reads it unless something went wrong.
pub fn init(verbose: u8, quiet: bool, log_file: Option<&Path>) -> io::Result<()> {
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(false)
        .event_format(Prefixed)
        .with_filter(level);
    let file_layer = match log_file {
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

/// Owner-only and appending: the log names endpoints, and several sessions
/// may share one path.
fn open_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

struct Prefixed;

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
        writer.write_str(PREFIX)?;
        match *event.metadata().level() {
            Level::ERROR => writer.write_str("error: ")?,
            Level::WARN => writer.write_str("warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
