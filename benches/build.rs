//! Records the compiler that built the benchmarks, for the report's hardware table: the
//! binary may run where no `rustc` is installed (a larger machine for `--scaling`).

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MULTIPROC_BENCH_RUSTC={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
