//! `arp-conformance` (PyPI, the ARP project's own checker) against the real gateway in front of
//! the test coordinator: smoke and surface tiers, strict. `scripts/test` installs the checker
//! into `.venv`; `ARP_TEST_PYTHON` may point at another interpreter that has it.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ARP_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"));
    assert!(
        p.exists(),
        "no Python with arp-conformance: run scripts/test (it creates .venv), or set ARP_TEST_PYTHON"
    );
    p
}

fn run_tier(url: &str, tier: &str) -> (bool, String) {
    let wrapper = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/run_conformance.py"
    );
    let out = Command::new(python())
        .args([
            wrapper,
            "check",
            "run-gateway",
            "--tier",
            tier,
            "--strict",
            "--url",
            url,
        ])
        .output()
        .expect("run arp-conformance");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn arp_conformance_smoke_and_surface_strict() {
    let coord = TestCoordinator::start();
    let gw = Gateway::start(
        &[
            ("JARVIS_RUN_COORDINATOR_URL", &coord.url()),
            ("ARP_AUTH_PROFILE", "dev-insecure"),
        ],
        &[],
    );
    for tier in ["smoke", "surface"] {
        let (ok, report) = run_tier(&gw.url(), tier);
        println!("--- arp-conformance {tier} ---\n{report}");
        assert!(
            ok,
            "arp-conformance --tier {tier} --strict failed:\n{report}"
        );
        assert!(report.contains("ok=True"), "{report}");
        let passed = report.lines().filter(|l| l.starts_with("- PASS")).count();
        assert!(passed >= 2, "report lists passing checks: {report}");
        assert!(!report.lines().any(|l| l.starts_with("- FAIL")), "{report}");
    }
    // The surface tier's POST /v1/runs with `{}` must have been stopped at the gateway.
    assert!(coord
        .requests()
        .iter()
        .all(|r| !(r.method == "POST" && r.path == "/v1/runs" && &r.body[..] == b"{}")));
}
