//! Finding report files: glob patterns relative to the workspace (`**/TEST-*.xml`), matched
//! against the files under a root directory (`/workspace` in the component, any directory in
//! tests). Symbolic links are not followed, and `.git` and `node_modules` directories are not
//! entered; each pattern's literal leading directories (`build/reports/` in
//! `build/reports/**/*.xml`) are where its walk starts.

use std::path::Path;

use chengis_plugin_sdk::ConfigError;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Directories never entered: they hold no reports of the build but many files.
const SKIPPED_DIRS: &[&str] = &[".git", "node_modules"];

/// How deep the walk goes below the root.
const MAX_DEPTH: usize = 64;

/// A list of glob patterns from one configuration key.
#[derive(Debug, Clone)]
pub struct Patterns {
    /// The patterns as written (trimmed), for messages.
    pub texts: Vec<String>,
    set: GlobSet,
    /// The literal leading directories of each pattern (`""` for the root).
    bases: Vec<String>,
}

impl Patterns {
    /// Parses the value of `key`: patterns separated by commas or newlines. `*` does not cross
    /// `/`, `**/` matches any number of directories.
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError { key: key.into(), message };
        let texts: Vec<String> =
            text.split([',', '\n']).map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
        if texts.is_empty() {
            return Err(error("has no pattern".into()));
        }
        let mut builder = GlobSetBuilder::new();
        let mut bases = Vec::new();
        for text in &texts {
            let pattern = text.trim_start_matches("./");
            if pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
                return Err(error(format!("{text:?} must be relative to the workspace, without `..`")));
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| error(format!("{text:?} is not a valid glob: {}", e.kind())))?;
            builder.add(glob);
            let parts: Vec<&str> = pattern.split('/').collect();
            let literal = parts[..parts.len() - 1]
                .iter()
                .take_while(|part| !part.contains(['*', '?', '[', '{', '\\']))
                .filter(|part| !part.is_empty() && **part != ".")
                .copied()
                .collect::<Vec<_>>();
            bases.push(literal.join("/"));
        }
        let set = builder.build().map_err(|e| error(e.to_string()))?;
        Ok(Patterns { texts, set, bases })
    }

    /// Whether `path` (relative, `/`-separated) matches one of the patterns.
    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }
}

/// The files under `root` that match one of `patterns`, as paths relative to `root` with `/`,
/// sorted and without duplicates. A base directory that does not exist matches nothing.
pub fn find(root: &Path, patterns: &[&Patterns]) -> Result<Vec<String>, String> {
    let mut bases: Vec<&str> = patterns.iter().flat_map(|p| p.bases.iter().map(String::as_str)).collect();
    bases.sort_unstable();
    bases.dedup();
    // A base inside another base is walked with it.
    let outer: Vec<&str> = bases
        .iter()
        .copied()
        .filter(|b| !bases.iter().any(|o| o != b && (o.is_empty() || b.starts_with(&format!("{o}/")))))
        .collect();
    let mut found = Vec::new();
    for base in outer {
        let dir = if base.is_empty() { root.to_path_buf() } else { root.join(base) };
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => walk(root, &dir, base, 0, patterns, &mut found)?,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !base.is_empty() => {}
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// Walks `dir` (whose path relative to the root is `relative`), adding matching files.
fn walk(
    root: &Path,
    dir: &Path,
    relative: &str,
    depth: usize,
    patterns: &[&Patterns],
    found: &mut Vec<String>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if relative.is_empty() { name.clone() } else { format!("{relative}/{name}") };
        // The entry's own type: a symbolic link is neither a file nor a directory here.
        let kind = entry.file_type().map_err(|e| format!("cannot read {}: {e}", root.join(&path).display()))?;
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                walk(root, &entry.path(), &path, depth + 1, patterns, found)?;
            }
        } else if kind.is_file() && patterns.iter().any(|p| p.matches(&path)) {
            found.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, path: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "x").unwrap();
    }

    #[test]
    fn default_patterns_find_reports_anywhere_but_in_skipped_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "TEST-root.xml",
            "a/target/surefire-reports/TEST-com.x.AppTest.xml",
            "a/target/surefire-reports/com.x.AppTest.txt",
            "junit.xml",
            "web/junit-report.xml",
            "node_modules/pkg/junit.xml",
            ".git/junit.xml",
            "notjunit.xml",
        ] {
            touch(dir.path(), path);
        }
        let patterns = Patterns::parse("paths", "**/TEST-*.xml,**/junit*.xml").unwrap();
        assert_eq!(
            find(dir.path(), &[&patterns]).unwrap(),
            ["TEST-root.xml", "a/target/surefire-reports/TEST-com.x.AppTest.xml", "junit.xml", "web/junit-report.xml"]
        );
    }

    #[test]
    fn literal_bases_star_and_several_lists() {
        let dir = tempfile::tempdir().unwrap();
        for path in ["reports/a.xml", "reports/deep/b.xml", "other/c.xml", "t/x.tap", "t/sub/y.tap"] {
            touch(dir.path(), path);
        }
        let xml = Patterns::parse("paths", "./reports/*.xml\n\n missing/**/*.xml ").unwrap();
        assert_eq!(xml.texts, ["./reports/*.xml", "missing/**/*.xml"]);
        assert_eq!(xml.bases, ["reports", "missing"]);
        let tap = Patterns::parse("tap", "t/**/*.tap, reports/a.xml").unwrap();
        assert_eq!(find(dir.path(), &[&xml, &tap]).unwrap(), ["reports/a.xml", "t/sub/y.tap", "t/x.tap"]);
        let deep = Patterns::parse("paths", "reports/**").unwrap();
        assert_eq!(find(dir.path(), &[&deep]).unwrap(), ["reports/a.xml", "reports/deep/b.xml"]);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        touch(outside.path(), "TEST-secret.xml");
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "in/TEST-a.xml");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("TEST-secret.xml"), dir.path().join("TEST-b.xml")).unwrap();
        let patterns = Patterns::parse("paths", "**/TEST-*.xml").unwrap();
        assert_eq!(find(dir.path(), &[&patterns]).unwrap(), ["in/TEST-a.xml"]);
    }

    #[test]
    fn bad_patterns_name_the_key() {
        let error = Patterns::parse("paths", "a/*.xml, ../x.xml").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"config key "paths": "../x.xml" must be relative to the workspace, without `..`"#
        );
        assert!(Patterns::parse("tap", "/abs/*.tap").unwrap_err().message.contains("must be relative"));
        let error = Patterns::parse("paths", "a/[b.xml").unwrap_err();
        assert!(error.to_string().starts_with(r#"config key "paths": "a/[b.xml" is not a valid glob: "#), "{error}");
        assert_eq!(Patterns::parse("paths", " , \n").unwrap_err().message, "has no pattern");
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let patterns = Patterns::parse("paths", "**/*.xml").unwrap();
        let error = find(Path::new("/nonexistent/workspace"), &[&patterns]).unwrap_err();
        assert!(error.starts_with("cannot read /nonexistent/workspace: "), "{error}");
    }
}
