//! The `fair` benchmark, briefly (one round of one second per target, unpinned), so that it keeps
//! working: nginx must be configurable to add what the node adds, every target must be answered
//! with 2xx only, and the report must carry every target and the ratios. The figures of
//! a debug build mean nothing; the published ones come from `chaos/fair.sh` on a release build.

use gatehouse_chaos::fair::{Mode, Settings, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fair_benchmark_measures_every_target_with_nginx_doing_the_same_work() {
    let settings = Settings {
        rounds: 1,
        seconds: 1,
        modes: vec![Mode::Unpinned],
        generator: env!("CARGO_BIN_EXE_gatehouse-chaos").into(),
        only: Vec::new(),
    };
    let outcome = run(settings).await.unwrap_or_else(|e| panic!("{e}"));
    for target in [
        "nginx unprotected",
        "gatehouse unprotected",
        "gatehouse cached token",
        "gatehouse cached signed URL",
        "gatehouse cached public share",
        "gatehouse tracing at ratio 0",
        "nginx 1 MiB download",
        "gatehouse 1 MiB download",
        "nginx 1 MiB upload",
        "gatehouse 1 MiB upload",
        "nginx HTTP/2 (h2c)",
        "gatehouse HTTP/2 (h2c)",
        "nginx TLS",
        "gatehouse TLS",
    ] {
        assert_eq!(
            outcome.report.matches(&format!("| {target} |")).count(),
            3,
            "{target} at saturation, 50 % and 80 %:\n{}",
            outcome.report
        );
    }
    for ratio in [
        "gatehouse / nginx proxy CPU per request",
        "gatehouse cached public share / unprotected",
        "gatehouse tracing at ratio 0 / unprotected",
    ] {
        assert!(
            outcome.report.contains(ratio),
            "{ratio}:\n{}",
            outcome.report
        );
    }
    let samples: Vec<serde_json::Value> = serde_json::from_str(&outcome.json).expect("JSON");
    assert_eq!(samples.len(), 14 * 3);
    for s in &samples {
        assert!(s["proxy_cpu_us"].as_f64().is_some_and(|v| v > 0.0), "{s}");
        assert!(
            s["outcome"]["completed"].as_u64().is_some_and(|n| n > 0),
            "{s}"
        );
    }
}
