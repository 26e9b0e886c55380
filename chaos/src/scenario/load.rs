//! The steady, bounded load a scenario runs under: an open-loop generator (each request starts at
//! its scheduled time whether or not earlier ones have answered, so a stalled cluster shows up as
//! latency and failures instead of as a generator that politely slowed down) sending a fixed mix
//! through the load balancer, and recording every request's start, latency and outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatehouse_tests::client::{ReqBody, bearer, empty, full};
use gatehouse_tests::signing::{Link, sign};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// What a request stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    /// GET with a bearer token every node has already validated.
    Cached,
    /// GET with a token no node has seen: validation, user info, claims-cache write.
    Login,
    /// GET of a pre-signed URL (links repeat, as shared links do).
    Signed,
    /// PUT of a small body with the cached token.
    Upload,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cached, Kind::Login, Kind::Signed, Kind::Upload];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Cached => "cached session GET",
            Kind::Login => "new login",
            Kind::Signed => "signed URL GET",
            Kind::Upload => "upload (PUT 4 KiB)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Outcome {
    /// The answer's status and whether it carried `Retry-After`.
    Status { code: u16, retry_after: bool },
    /// No answer: connection error or the generator's 10 s limit.
    Error(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Status { code, .. } if (200..300).contains(code))
    }

    /// `200`, `503+Retry-After`, `error: …`: how the report groups outcomes.
    pub fn label(&self) -> String {
        match self {
            Outcome::Status {
                code,
                retry_after: true,
            } => format!("{code}+Retry-After"),
            Outcome::Status { code, .. } => code.to_string(),
            Outcome::Error(e) => format!("error: {e}"),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub kind: Kind,
    /// Seconds since the load started.
    pub start: f64,
    pub latency_ms: f64,
    pub outcome: Outcome,
}

impl Record {
    pub fn end(&self) -> f64 {
        self.start + self.latency_ms / 1000.0
    }
}

/// Requests per second of each kind.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub cached: f64,
    pub login: f64,
    pub signed: f64,
    pub upload: f64,
}

impl Mix {
    fn rate(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Cached => self.cached,
            Kind::Login => self.login,
            Kind::Signed => self.signed,
            Kind::Upload => self.upload,
        }
    }

    /// New-login tokens a run of `secs` uses (one per login).
    pub fn logins_needed(&self, secs: f64) -> usize {
        (self.login * secs).ceil() as usize
    }

    /// How many fresh tokens to keep ready: enough to last through a fault of `fault` seconds
    /// during which the provider cannot issue any.
    pub fn token_buffer(&self, fault: f64) -> usize {
        self.logins_needed(fault + 10.0).max(20)
    }
}

/// Fresh tokens not yet seen by any node. The test provider keeps about 300 issued tokens
/// (older ones are evicted and then refused by its user-info endpoint), so a long run refills
/// this as it goes instead of minting every token up front.
pub type TokenQueue = Arc<Mutex<std::collections::VecDeque<String>>>;

/// What the requests carry, prepared before the load starts so that the generator itself needs
/// neither the IdP nor NATS while a fault is on.
pub struct Material {
    /// `http://<load balancer>`
    pub base: String,
    /// The load balancer's `host:port` (signed URLs are signed for the Host they are sent to).
    pub host: String,
    pub cached_token: String,
    /// Fresh tokens, one per new login, taken from the front (kept filled by the scenario).
    pub login_tokens: TokenQueue,
    pub user: String,
    pub signing_key: String,
}

/// Distinct signed links in rotation.
const SIGNED_LINKS: usize = 8;
/// Small enough for the balancer to hold the whole request and retry it on another node (HAProxy
/// retries only what fits its 16 KiB buffer; a streamed large upload cut by a dying node fails on
/// any balancer and is the client's to retry).
const UPLOAD_BYTES: usize = 4 * 1024;
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

pub struct Load {
    started: Instant,
    /// Milliseconds after the start at which no further request is started.
    stop_ms: Arc<AtomicU64>,
    skipped: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<Record>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts sending `mix` until [`Load::stop_at`] (and for at most `limit`). A new login due
    /// while the token queue is empty is not sent (and counted in [`Load::skipped_logins`]).
    pub fn start(material: Material, mix: Mix, limit: Duration) -> Load {
        let client: Client<HttpConnector, ReqBody> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let material = Arc::new(material);
        let signed: Arc<Vec<String>> = Arc::new(
            (0..SIGNED_LINKS)
                .map(|i| {
                    let path = format!("/files/shared-{i}.pdf");
                    sign(
                        &Link {
                            host: &material.host,
                            path: &path,
                            params: "",
                            user: &material.user,
                            verb: "GET",
                            signed_at: SystemTime::now(),
                            expires: Duration::from_secs(3600),
                        },
                        &material.signing_key,
                    )
                })
                .collect(),
        );
        let started = Instant::now();
        let stop_ms = Arc::new(AtomicU64::new(limit.as_millis() as u64));
        let skipped = Arc::new(AtomicU64::new(0));
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for kind in Kind::ALL {
            let rate = mix.rate(kind);
            if rate <= 0.0 {
                continue;
            }
            let (client, material, signed, records, stop_ms, skipped) = (
                client.clone(),
                material.clone(),
                signed.clone(),
                records.clone(),
                stop_ms.clone(),
                skipped.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut inflight = Vec::new();
                for i in 0.. {
                    let offset = Duration::from_secs_f64(i as f64 / rate);
                    if offset.as_millis() as u64 >= stop_ms.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep_until((started + offset).into()).await;
                    let Some(req) = request(kind, i, &material, &signed) else {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (client, records) = (client.clone(), records.clone());
                    inflight.push(tokio::spawn(async move {
                        let t = Instant::now();
                        let outcome = send(&client, req).await;
                        let record = Record {
                            kind,
                            start: (t - started).as_secs_f64(),
                            latency_ms: t.elapsed().as_secs_f64() * 1000.0,
                            outcome,
                        };
                        records.lock().unwrap().push(record);
                    }));
                }
                for task in inflight {
                    let _ = task.await;
                }
            }));
        }
        Load {
            started,
            stop_ms,
            skipped,
            records,
            tasks,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Seconds since the load started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until `at` seconds after the start.
    pub async fn until(&self, at: f64) {
        tokio::time::sleep_until((self.started + Duration::from_secs_f64(at)).into()).await;
    }

    /// New logins not sent because no fresh token was ready.
    pub fn skipped_logins(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Starts no request later than `at` seconds after the start.
    pub fn stop_at(&self, at: f64) {
        self.stop_ms
            .fetch_min((at * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Waits for every scheduled request to finish; the records in start order.
    pub async fn finish(self) -> Vec<Record> {
        for task in self.tasks {
            let _ = task.await;
        }
        let mut records = std::mem::take(&mut *self.records.lock().unwrap());
        records.sort_by(|a, b| a.start.total_cmp(&b.start));
        records
    }
}

fn request(
    kind: Kind,
    i: usize,
    m: &Material,
    signed: &[String],
) -> Option<http::Request<ReqBody>> {
    let cached = bearer(&m.cached_token);
    let (method, uri, auth, body) = match kind {
        Kind::Cached => ("GET", format!("{}/data/{i}", m.base), Some(cached), empty()),
        Kind::Login => {
            let token = bearer(&m.login_tokens.lock().unwrap().pop_front()?);
            ("GET", format!("{}/login/{i}", m.base), Some(token), empty())
        }
        Kind::Signed => (
            "GET",
            format!("{}{}", m.base, signed[i % signed.len()]),
            None,
            empty(),
        ),
        Kind::Upload => (
            "PUT",
            format!("{}/files/upload-{i}/__upload", m.base),
            Some(cached),
            full(Bytes::from(vec![b'u'; UPLOAD_BYTES])),
        ),
    };
    let mut req = http::Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    Some(req.body(body).expect("request"))
}

async fn send(client: &Client<HttpConnector, ReqBody>, req: http::Request<ReqBody>) -> Outcome {
    let fut = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                msg = format!("{msg}: {source}");
            }
            msg
        })?;
        let code = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok::<_, String>(Outcome::Status { code, retry_after })
    };
    match tokio::time::timeout(REQUEST_LIMIT, fut).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Error(e),
        Err(_) => Outcome::Error(format!("no answer within {REQUEST_LIMIT:?}")),
    }
}
