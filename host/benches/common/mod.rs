//! Shared by the benches: a git repository holding one pipeline file.

use std::path::Path;
use std::process::Command;

/// Creates a git repository at `dir` whose one commit on `main` holds `chengis.yml` with
/// `pipeline`; returns its `file://` URL.
pub fn repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(dir)
                .env("GIT_AUTHOR_NAME", "b")
                .env("GIT_AUTHOR_EMAIL", "b@b")
                .env("GIT_COMMITTER_NAME", "b")
                .env("GIT_COMMITTER_EMAIL", "b@b")
                .status()
                .unwrap()
                .success()
        )
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("chengis.yml"), pipeline).unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "x"]);
    format!("file://{}", dir.display())
}
