//! Finished spans → the collector, without ever making a request wait.
//!
//! Why not the SDK's `BatchSpanProcessor`: it runs its own thread, drops spans without telling
//! anyone but its shutdown report, and logs through the SDK's internal logging once per failed
//! batch. Here:
//!
//! - `on_end` (on the thread that ended the span, often a request's worker) only does a
//!   `try_send` into a bounded channel; a full channel drops the span and counts it.
//! - One task on the node's main runtime collects batches (up to [`MAX_BATCH`] spans, or what
//!   arrived within [`BATCH_DELAY`] of the first) and exports one batch at a time, each call bounded
//!   by the export timeout. A collector that is down, slow or refusing only fills the channel.
//! - Failures are counted per call and per span, and logged once per outage: a warning when
//!   exporting starts failing, one line when it works again with the number of spans lost.
//! - Nothing here blocks start-up: the exporter connects lazily, at the first export.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Most spans sent in one export call.
pub const MAX_BATCH: usize = 512;
/// Longest a finished span waits for companions before its batch is sent.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Why a finished span never reached the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full (the collector is slow or away).
    QueueFull,
    /// The export call carrying it failed or timed out.
    ExportFailed,
}

/// Told what happens to finished spans (the node wires this to its metrics).
pub trait ExportObserver: Send + Sync {
    fn exported(&self, spans: usize);
    fn dropped(&self, reason: DropReason, spans: usize);
    fn export_failed(&self);
    /// Spans waiting in the queue now.
    fn queued(&self, spans: usize);
}

enum Command {
    /// Export everything queued so far, then answer.
    Flush(oneshot::Sender<()>),
}

/// The [`SpanProcessor`] the provider is built with.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    observer: ObserverHandle,
    /// Dropping spans since the queue last accepted one (so a full queue logs once).
    dropping: AtomicBool,
}

/// Where the export task runs and how it is controlled.
pub struct ExportTask {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ObserverHandle(Arc<dyn ExportObserver>);

impl std::fmt::Debug for ObserverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportObserver")
    }
}

/// Starts the export task for `exporter` on the current runtime; `destination` is how log lines
/// name the collector.
pub fn start<E>(
    exporter: E,
    queue_size: usize,
    timeout: Duration,
    destination: String,
    observer: Arc<dyn ExportObserver>,
) -> (QueueProcessor, ExportTask)
where
    E: SpanExporter + 'static,
{
    let (spans_tx, spans_rx) = mpsc::channel(queue_size.max(1));
    let (commands_tx, commands_rx) = mpsc::channel(4);
    let observer = ObserverHandle(observer);
    let task = tokio::spawn(
        Exporting {
            exporter,
            spans: spans_rx,
            commands: commands_rx,
            timeout,
            destination,
            observer: observer.clone(),
            failing: None,
            capacity: queue_size.max(1),
        }
        .run(),
    );
    (
        QueueProcessor {
            spans: spans_tx,
            observer,
            dropping: AtomicBool::new(false),
        },
        ExportTask {
            commands: commands_tx,
            task,
        },
    )
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {
                if self.dropping.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export queue accepts spans again");
                }
            }
            Err(_) => {
                self.observer.0.dropped(DropReason::QueueFull, 1);
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        capacity = self.spans.max_capacity(),
                        "trace export queue full: dropping finished spans until the collector catches up"
                    );
                }
            }
        }
    }

    /// Flushing is driven by [`ExportTask::flush`] (an async call); the synchronous SDK hook
    /// cannot wait on the runtime it would block.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl ExportTask {
    /// Exports everything queued so far; false if `deadline` passed first.
    pub async fn flush(&self, deadline: Instant) -> bool {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(())))
    }

    /// Flushes within `deadline`, then stops the task.
    pub async fn shutdown(self, deadline: Instant) -> bool {
        let flushed = self.flush(deadline).await;
        self.task.abort();
        flushed
    }
}

struct Exporting<E> {
    exporter: E,
    spans: mpsc::Receiver<SpanData>,
    commands: mpsc::Receiver<Command>,
    timeout: Duration,
    destination: String,
    observer: ObserverHandle,
    /// Spans lost since exporting started failing; `None` while it works.
    failing: Option<usize>,
    capacity: usize,
}

impl<E: SpanExporter> Exporting<E> {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Flush(done)) => {
                        while !self.spans.is_empty() {
                            let batch = self.take_ready();
                            self.export(batch).await;
                        }
                        let _ = done.send(());
                    }
                    None => return,
                },
                first = self.spans.recv() => {
                    let Some(first) = first else { return };
                    let batch = self.collect(first).await;
                    self.export(batch).await;
                }
            }
        }
    }

    /// `first` and whatever follows within [`BATCH_DELAY`], up to [`MAX_BATCH`] spans.
    async fn collect(&mut self, first: SpanData) -> Vec<SpanData> {
        let mut batch = Vec::with_capacity(MAX_BATCH.min(64));
        batch.push(first);
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            // A flush request cuts the wait short: it wants these spans out now.
            if !self.commands.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        batch
    }

    fn take_ready(&mut self) -> Vec<SpanData> {
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            match self.spans.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        batch
    }

    async fn export(&mut self, batch: Vec<SpanData>) {
        self.observer
            .0
            .queued(self.capacity - self.spans.capacity().min(self.capacity));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let result = match tokio::time::timeout(self.timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(()) => {
                self.observer.0.exported(n);
                if let Some(lost) = self.failing.take() {
                    tracing::info!(
                        collector = %self.destination,
                        spans_lost = lost,
                        "trace export works again"
                    );
                }
            }
            Err(error) => {
                self.observer.0.export_failed();
                self.observer.0.dropped(DropReason::ExportFailed, n);
                match &mut self.failing {
                    Some(lost) => *lost += n,
                    None => {
                        self.failing = Some(n);
                        tracing::warn!(
                            collector = %self.destination,
                            %error,
                            "trace export failing: spans are dropped until the collector answers \
                             again (requests are not affected)"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    #[derive(Default)]
    struct Counts {
        exported: AtomicUsize,
        queue_full: AtomicUsize,
        export_failed: AtomicUsize,
        failures: AtomicUsize,
    }

    impl ExportObserver for Counts {
        fn exported(&self, spans: usize) {
            self.exported.fetch_add(spans, Ordering::SeqCst);
        }
        fn dropped(&self, reason: DropReason, spans: usize) {
            match reason {
                DropReason::QueueFull => &self.queue_full,
                DropReason::ExportFailed => &self.export_failed,
            }
            .fetch_add(spans, Ordering::SeqCst);
        }
        fn export_failed(&self) {
            self.failures.fetch_add(1, Ordering::SeqCst);
        }
        fn queued(&self, _: usize) {}
    }

    /// An exporter that fails, hangs or records, as told.
    #[derive(Debug, Clone, Default)]
    struct Scripted {
        mode: Arc<Mutex<Mode>>,
        received: Arc<Mutex<Vec<String>>>,
    }

    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    enum Mode {
        #[default]
        Accept,
        Fail,
        Hang,
    }

    impl SpanExporter for Scripted {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let mode = *self.mode.lock().unwrap();
            match mode {
                Mode::Accept => {
                    let mut r = self.received.lock().unwrap();
                    r.extend(batch.into_iter().map(|s| s.name.into_owned()));
                    Ok(())
                }
                Mode::Fail => Err(OTelSdkError::InternalFailure("connection refused".into())),
                Mode::Hang => std::future::pending().await,
            }
        }
    }

    fn provider(processor: QueueProcessor) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build()
    }

    fn emit(provider: &SdkTracerProvider, name: &'static str, n: usize) {
        let tracer = provider.tracer("test");
        for _ in 0..n {
            tracer.start(name).end();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spans_are_batched_exported_and_counted() {
        let exporter = Scripted::default();
        let counts = Arc::new(Counts::default());
        let (processor, task) = start(
            exporter.clone(),
            100,
            Duration::from_secs(5),
            "test".into(),
            counts.clone(),
        );
        let provider = provider(processor);
        emit(&provider, "a", 3);
        assert!(task.flush(Instant::now() + Duration::from_secs(10)).await);
        assert_eq!(exporter.received.lock().unwrap().len(), 3);
        assert_eq!(counts.exported.load(Ordering::SeqCst), 3);

        // Without a flush, the batch leaves after BATCH_DELAY.
        emit(&provider, "b", 2);
        tokio::time::sleep(BATCH_DELAY + Duration::from_millis(10)).await;
        tokio::task::yield_now().await;
        assert_eq!(exporter.received.lock().unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_collector_drops_counts_and_recovers() {
        let exporter = Scripted::default();
        *exporter.mode.lock().unwrap() = Mode::Fail;
        let counts = Arc::new(Counts::default());
        let (processor, task) = start(
            exporter.clone(),
            100,
            Duration::from_secs(5),
            "test".into(),
            counts.clone(),
        );
        let provider = provider(processor);
        emit(&provider, "lost", 4);
        assert!(task.flush(Instant::now() + Duration::from_secs(10)).await);
        assert_eq!(counts.export_failed.load(Ordering::SeqCst), 4);
        assert_eq!(counts.failures.load(Ordering::SeqCst), 1);
        *exporter.mode.lock().unwrap() = Mode::Accept;
        emit(&provider, "kept", 1);
        assert!(task.flush(Instant::now() + Duration::from_secs(10)).await);
        assert_eq!(*exporter.received.lock().unwrap(), ["kept"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_collector_times_out_and_the_queue_bounds_memory() {
        let exporter = Scripted::default();
        *exporter.mode.lock().unwrap() = Mode::Hang;
        let counts = Arc::new(Counts::default());
        let (processor, task) = start(
            exporter.clone(),
            10,
            Duration::from_secs(2),
            "test".into(),
            counts.clone(),
        );
        let provider = provider(processor);
        emit(&provider, "first", 1);
        // Let the task take the first span and start its (hanging) export.
        tokio::time::sleep(BATCH_DELAY + Duration::from_millis(1)).await;
        let started = std::time::Instant::now();
        emit(&provider, "more", 25);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "ending spans never waits for the collector"
        );
        assert_eq!(counts.queue_full.load(Ordering::SeqCst), 15);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(counts.failures.load(Ordering::SeqCst), 1);
        assert_eq!(counts.export_failed.load(Ordering::SeqCst), 1);
        assert!(!task.flush(Instant::now() + Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn unsampled_spans_are_not_queued() {
        let exporter = Scripted::default();
        let counts = Arc::new(Counts::default());
        let (processor, task) = start(
            exporter.clone(),
            10,
            Duration::from_secs(2),
            "test".into(),
            counts.clone(),
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
            .build();
        let mut span = provider.tracer("t").start("unsampled");
        assert!(!span.is_recording());
        span.end();
        assert!(task.flush(Instant::now() + Duration::from_secs(5)).await);
        assert!(exporter.received.lock().unwrap().is_empty());
    }
}
