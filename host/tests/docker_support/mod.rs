//! Shared by the Docker tests: whether the engine and the test images are there (required
//! when `CHENGIS_TEST_REQUIRE` names `docker`), and the objects carrying a label.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The test image with sh and the busybox tools.
pub const IMAGE: &str = "chengis-test/busybox";
/// The test image serving HTTP on port 80.
pub const SERVICE_IMAGE: &str = "chengis-test/httpd";

/// True when Docker and the test images are there; panics when they are required but missing.
pub fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        if !matches!(&info, Ok(o) if o.status.success()) {
            return Err("no Docker engine answers `docker info`".into());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build.sh");
        let built = Command::new("bash").arg(&script).output().map_err(|e| e.to_string())?;
        if !built.status.success() {
            return Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&built.stderr)));
        }
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(e) => {
            let required = std::env::var("CHENGIS_TEST_REQUIRE").unwrap_or_default();
            assert!(!required.split(',').any(|r| r.trim() == "docker"), "CHENGIS_TEST_REQUIRE names docker: {e}");
            eprintln!("skipping a Docker test: {e}");
            false
        }
    }
}

/// Docker objects (containers or networks) carrying `label`.
pub fn objects(kind: &str, label: &str) -> Vec<String> {
    let args: Vec<&str> = match kind {
        "container" => vec!["ps", "-aq", "--filter"],
        _ => vec!["network", "ls", "-q", "--filter"],
    };
    let out = Command::new("docker").args(args).arg(format!("label={label}")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}
