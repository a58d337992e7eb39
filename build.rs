//! Records the git commit and build time for `GET /v1/version` (`build.commit`, `build.built_at`).
use std::process::Command;

fn main() {
    let commit = std::env::var("ARP_GATEWAY_BUILD_COMMIT").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    });
    if let Some(c) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=ARP_GATEWAY_COMMIT={c}");
    }
    let now = std::time::SystemTime::now();
    println!(
        "cargo:rustc-env=ARP_GATEWAY_BUILT_AT={}",
        humantime::format_rfc3339_seconds(now)
    );
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=ARP_GATEWAY_BUILD_COMMIT");
}
