//! The `switchyard` binary: `metrics parse`, start-up errors.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn parse(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(["metrics", "parse"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn prints_exactly_the_documented_keys() {
    let (code, out, err) = parse(&[&fixture("vllm_v1.txt")], b"");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    let mut want = vec![
        "engine",
        "queued",
        "running",
        "kv_usage",
        "running_lora",
        "waiting_lora",
        "max_lora",
        "cache_block_size",
        "cache_num_blocks",
        "errors",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    assert_eq!(v["engine"], "vllm");
    assert_eq!(v["queued"], 4);
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn missing_metrics_are_null_with_errors_and_exit_zero() {
    let (code, out, _) = parse(&["--engine", "sglang", "-"], b"vllm:num_requests_waiting 3\nsglang:num_queue_reqs 2\n");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["queued"], 2);
    assert_eq!(v["running"], serde_json::Value::Null);
    assert_eq!(v["running_lora"], serde_json::Value::Null);
    assert_eq!(v["errors"].as_array().expect("errors").len(), 3);
}

#[test]
fn flags_and_config_select_the_mapping() {
    let (code, out, _) = parse(
        &["--kv-cache-usage-percentage-metric", "sglang:token_usage", "--lora-info-metric", "", &fixture("sglang.txt")],
        b"",
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["kv_usage"], 0.96);
    assert_eq!(v["running_lora"], serde_json::Value::Null);
    let (code, out, _) =
        parse(&["--config", &fixture("config.yaml"), "--engine", "my-engine", "-"], b"my_queue_depth{pool=\"a\"} 9\n");
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("json")["queued"], 9);
}

#[test]
fn unusable_input_and_config_fail_clearly() {
    let (code, _, err) = parse(&["-"], b"\xff\xfe");
    assert_ne!(code, 0);
    assert!(err.contains("not valid UTF-8"), "{err}");
    let (code, _, err) = parse(&["--engine", "nope", "-"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("unknown engine \"nope\""), "{err}");
    let (code, _, err) = parse(&["--config", &fixture("config.wrongkey.yaml"), "-"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("plugins[0].parameters.engineConfigs[0].kvUsageSpc"), "{err}");
    let (code, _, err) = parse(&["--total-queued-requests-metric", "a{", "-"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("--total-queued-requests-metric"), "{err}");
    let (code, _, err) = parse(&["/no/such/file"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn unreadable_etcd_tls_files_stop_the_role_at_startup() {
    let endpoints = "/no/such/endpoints.yaml";
    for role in [&["picker"][..], &["scraper"], &["aggregator", "--endpoints-file", endpoints]] {
        let out = Command::new(BIN)
            .args(role)
            .args(["--etcd-endpoints", "127.0.0.1:1", "--etcd-ca-file", "/no/such/ca.pem"])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{role:?}: {err}");
        assert!(err.contains("--etcd-ca-file") && err.contains("/no/such/ca.pem"), "{role:?}: {err}");
    }
    let out = Command::new(BIN).args(["picker", "--etcd-cert-file", "c.pem"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--etcd-key-file"), "{err}");
}

/// Regression (issue 16): with `--grpc-port` already in use, `switchyard standalone` printed the
/// bind error and then panicked ("there is no reactor running": actors spawned before the error
/// were started while the runtime was torn down). Every role, every port: one error line naming
/// the flag, exit code 1, no panic.
#[test]
fn a_port_in_use_is_one_error_line_naming_the_flag_in_every_role() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("dir");
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(&endpoints, "endpoints: []\n").expect("write");
    let endpoints = endpoints.to_str().expect("utf-8 path");
    let serve = ["--grpc-port", "--grpc-health-port", "--metrics-port"];
    let roles: [(&[&str], &[&str]); 4] = [
        (&["standalone", "--endpoints-file", endpoints, "--secure-serving=false"], &serve),
        (&["aggregator", "--endpoints-file", endpoints], &["--control-port", "--grpc-health-port", "--metrics-port"]),
        (&["picker", "--aggregators", "127.0.0.1:1", "--secure-serving=false"], &serve),
        (&["scraper", "--aggregators", "127.0.0.1:1"], &["--metrics-port"]),
    ];
    for (role, ports) in roles {
        for flag in ports {
            // The role's other ports: any free one.
            let others = ports.iter().filter(|f| *f != flag).flat_map(|f| [*f, "0"]);
            let out = Command::new(BIN)
                .args(role)
                .args(["--listen-host", "127.0.0.1", flag, &port])
                .args(others)
                .output()
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            let what = format!("{} {flag}: {err}", role[0]);
            assert!(!err.contains("panicked"), "{what}");
            assert_eq!(out.status.code(), Some(1), "{what}");
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{what}");
            assert!(lines[0].starts_with("error: ") && lines[0].contains(flag), "{what}");
            assert!(lines[0].contains(&format!("127.0.0.1:{port}")) && lines[0].contains("in use"), "{what}");
        }
    }
}

#[test]
fn an_unusable_worker_thread_count_is_a_clear_error() {
    for value in ["0", "two", "-1"] {
        let out = Command::new(BIN)
            .args(["picker", "--aggregators", "127.0.0.1:1"])
            .env(switchyard::WORKER_THREADS_ENV, value)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains("TOKIO_WORKER_THREADS") && err.contains("at least 1"), "{value}: {err}");
        assert!(!err.contains("panicked"), "{value}: {err}");
    }
}
