//! Every configuration shipped in `conf/` is valid (`--check` passes), so the examples in the
//! README cannot rot.

mod common;

use common::Gateway;
use std::time::Duration;

#[test]
fn every_shipped_configuration_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let p = path.to_string_lossy().into_owned();
        // gateway.yaml is the reference and names no coordinator; give it one through the
        // environment, as an operator would.
        let env = [("JARVIS_RUN_COORDINATOR_URL", "http://127.0.0.1:9")];
        let env: &[(&str, &str)] = if p.ends_with("gateway.yaml") {
            &env
        } else {
            &[]
        };
        let (status, out) =
            Gateway::run_to_exit(env, &["--config", &p, "--check"], Duration::from_secs(20));
        assert!(status.success(), "{p}: {out}");
        assert!(out.contains("configuration OK"), "{p}: {out}");
        checked += 1;
    }
    assert!(checked >= 5, "found only {checked} files in conf/");
}
