//! The process-wide log subscriber, configured from the oCIS `log.*` keys.
//!
//! Output is one JSON object per line by default (`timestamp`, `level`, `target`, the event's fields
//! flattened next to them, and `message`), which log shippers can parse without configuration;
//! `log.pretty` switches to a single-line human format and `log.color` adds ANSI colours to it.
//! Logs go to stderr, or are appended to `log.file`.
//!
//! `log.level` takes the oCIS names. `panic` and `fatal` have no `tracing` equivalent and mean
//! `error`; an empty level means `info`. The access log is emitted at `info` (as in oCIS), so a level
//! of `warn` or stricter silences it. `RUST_LOG`, when set, replaces the level with a full
//! `tracing` filter directive (e.g. `info,access_log=off`).
//!
//! Every line carries the node's id (`node_id`, the `service.instance.id` of its traces) and,
//! when it is written while a traced unit of work runs (a request, an IdP call inside it), the
//! `trace_id` and `span_id` of the current OpenTelemetry span, so that a log line leads to its
//! trace and a trace to its log lines.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_shared::config::Log;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "log.level: unknown level {0:?} (expected panic, fatal, error, warn, info, debug or trace)"
    )]
    UnknownLevel(String),
    #[error("RUST_LOG: invalid filter {value:?}: {message}")]
    InvalidRustLog { value: String, message: String },
    #[error("log.file: cannot open {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a global log subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the log destination open; hold it until the process exits.
#[must_use = "dropping the guard may close the log file"]
pub struct LogGuard {
    _file: Option<Arc<File>>,
}

/// Maps an oCIS log level name to a `tracing` level filter.
pub fn level_filter(level: &str) -> Result<LevelFilter, LogError> {
    match level.trim().to_ascii_lowercase().as_str() {
        "" | "info" => Ok(LevelFilter::INFO),
        "panic" | "fatal" | "error" => Ok(LevelFilter::ERROR),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        _ => Err(LogError::UnknownLevel(level.to_owned())),
    }
}

/// Builds the subscriber `init` installs; `rust_log` is the value of `RUST_LOG` if set. Exposed so
/// that tests can capture the exact output format with their own writer.
pub fn subscriber(
    log: &Log,
    node_id: &str,
    rust_log: Option<&str>,
    writer: BoxMakeWriter,
) -> Result<impl Subscriber + Send + Sync + 'static, LogError> {
    let filter = match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(directives) => {
            EnvFilter::try_new(directives).map_err(|e| LogError::InvalidRustLog {
                value: directives.to_owned(),
                message: e.to_string(),
            })?
        }
        None => EnvFilter::default().add_directive(level_filter(&log.level)?.into()),
    };
    let format: Box<dyn Layer<Registry> + Send + Sync> = if log.pretty {
        tracing_subscriber::fmt::layer()
            .event_format(WithIds::pretty(format().with_ansi(log.color), node_id))
            .with_ansi(log.color)
            .with_writer(writer)
            .boxed()
    } else {
        let json = format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithIds::json(json, node_id))
            .with_writer(writer)
            .boxed()
    };
    Ok(Registry::default().with(format.with_filter(filter)))
}

/// An event format that appends `node_id`, and the current OpenTelemetry span's `trace_id` and
/// `span_id` when there is one, to every line the wrapped format writes.
struct WithIds<F> {
    inner: F,
    json: bool,
    /// The node id as the format spells it (a JSON string, or the bare id).
    node_id: String,
}

impl<F> WithIds<F> {
    fn json(inner: F, node_id: &str) -> Self {
        Self {
            inner,
            json: true,
            node_id: serde_json::to_string(node_id).unwrap_or_else(|_| "\"\"".to_owned()),
        }
    }

    fn pretty(inner: F, node_id: &str) -> Self {
        Self {
            inner,
            json: false,
            node_id: node_id.to_owned(),
        }
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, N, F> FormatEvent<S, N> for WithIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                // Re-entered (a log line written while formatting one): no ids for that one.
                return self.inner.format_event(ctx, writer, event);
            };
            line.clear();
            self.inner
                .format_event(ctx, Writer::new(&mut *line), event)?;
            let ids = gatehouse_shared::trace::current_ids();
            let end = line.trim_end_matches('\n').len();
            line.truncate(end);
            if self.json && line.ends_with('}') {
                line.pop();
                let _ = write!(line, ",\"node_id\":{}", self.node_id);
                if let Some((trace, span)) = ids {
                    let _ = write!(line, ",\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"");
                }
                line.push('}');
            } else {
                let _ = write!(line, " node_id={}", self.node_id);
                if let Some((trace, span)) = ids {
                    let _ = write!(line, " trace_id={trace} span_id={span}");
                }
            }
            line.push('\n');
            writer.write_str(&line)
        })
    }
}

/// Installs the global subscriber described by `log` (and `RUST_LOG`); `node_id` goes into every
/// line.
pub fn init(log: &Log, node_id: &str) -> Result<LogGuard, LogError> {
    let (writer, file) = if log.file.is_empty() {
        (BoxMakeWriter::new(std::io::stderr), None)
    } else {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log.file)
            .map(Arc::new)
            .map_err(|source| LogError::File {
                path: PathBuf::from(&log.file),
                source,
            })?;
        (BoxMakeWriter::new(Arc::clone(&file)), Some(file))
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    let subscriber = subscriber(log, node_id, rust_log.as_deref(), writer)?;
    tracing::subscriber::set_global_default(subscriber).map_err(|_| LogError::AlreadyInstalled)?;
    Ok(LogGuard { _file: file })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A writer collecting everything written to it, for asserting on log output.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub Arc<Mutex<Vec<u8>>>);

    impl Capture {
        pub(crate) fn lines(&self) -> Vec<String> {
            let buf = self.0.lock().unwrap();
            String::from_utf8_lossy(&buf)
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn log(level: &str, pretty: bool) -> Log {
        Log {
            level: level.into(),
            pretty,
            ..Log::default()
        }
    }

    #[test]
    fn ocis_level_names_map_to_tracing_levels() {
        assert_eq!(level_filter("panic").unwrap(), LevelFilter::ERROR);
        assert_eq!(level_filter("fatal").unwrap(), LevelFilter::ERROR);
        assert_eq!(level_filter("ERROR").unwrap(), LevelFilter::ERROR);
        assert_eq!(level_filter("warn").unwrap(), LevelFilter::WARN);
        assert_eq!(level_filter("").unwrap(), LevelFilter::INFO);
        assert_eq!(level_filter("debug").unwrap(), LevelFilter::DEBUG);
        assert_eq!(level_filter("trace").unwrap(), LevelFilter::TRACE);
        assert!(matches!(level_filter("loud"), Err(LogError::UnknownLevel(l)) if l == "loud"));
    }

    #[test]
    fn default_format_is_flat_json_lines_filtered_by_level() {
        let capture = Capture::default();
        let sub = subscriber(
            &log("warn", false),
            "node-a",
            None,
            BoxMakeWriter::new(capture.clone()),
        )
        .unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "t", "dropped");
            tracing::warn!(target: "t", answer = 42, "kept");
        });
        let lines = capture.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "t");
        assert_eq!(v["message"], "kept");
        assert_eq!(v["answer"], 42);
        assert!(v["timestamp"].is_string());
        assert_eq!(v["node_id"], "node-a");
        assert!(v.get("trace_id").is_none(), "no trace, no trace id");
    }

    #[test]
    fn lines_written_inside_a_span_carry_its_ids() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        };
        let capture = Capture::default();
        let sub = subscriber(
            &log("info", false),
            "node \"b\"",
            None,
            BoxMakeWriter::new(capture.clone()),
        )
        .unwrap();
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        tracing::subscriber::with_default(sub, || {
            let _attached = cx.attach();
            tracing::info!(target: "t", "inside");
        });
        let v: serde_json::Value = serde_json::from_str(&capture.lines()[0]).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["node_id"], "node \"b\"", "escaped into valid JSON");
        assert_eq!(v["message"], "inside");
    }

    #[test]
    fn pretty_is_human_readable_and_rust_log_overrides_level() {
        let capture = Capture::default();
        let sub = subscriber(
            &log("error", true),
            "node-a",
            Some("debug"),
            BoxMakeWriter::new(capture.clone()),
        )
        .unwrap();
        tracing::subscriber::with_default(sub, || tracing::debug!(target: "t", n = 1, "hello"));
        let lines = capture.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("DEBUG") && lines[0].contains("hello") && lines[0].contains("n=1")
        );
        assert!(lines[0].ends_with(" node_id=node-a"), "{}", lines[0]);
        assert!(serde_json::from_str::<serde_json::Value>(&lines[0]).is_err());
        assert!(!lines[0].contains('\u{1b}'), "no colour unless log.color");
    }

    #[test]
    fn invalid_rust_log_and_unopenable_file_are_reported() {
        let err = subscriber(
            &log("", false),
            "n",
            Some("=[bad"),
            BoxMakeWriter::new(std::io::sink),
        );
        assert!(matches!(err, Err(LogError::InvalidRustLog { .. })));
        let err = init(
            &Log {
                file: "/nonexistent-dir/gatehouse.log".into(),
                ..Log::default()
            },
            "n",
        );
        assert!(matches!(err, Err(LogError::File { .. })));
    }
}
