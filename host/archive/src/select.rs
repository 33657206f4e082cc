//! Selecting workspace paths by globs: pattern rules, the directory walk, and link containment.
//!
//! # Pattern rules
//! - Patterns are [globset] globs relative to the workspace root, matched against paths with
//!   `/` separators. `*` and `?` stay inside one path component; `**` crosses components. So
//!   `target` means the top-level `target` only, `**/target` means one at any depth.
//! - A leading `./` and `.` components are ignored; `.` alone means the whole workspace.
//! - A trailing `/` restricts the pattern to directories (`node_modules/`).
//! - A pattern that matches a directory selects it and everything below it.
//! - `!pattern` excludes; exclusions are applied after inclusions, and an excluded directory
//!   drops everything below it.
//! - Empty patterns, absolute patterns and patterns with a `..` component are refused.
//!
//! # Walk rules
//! - Entries named `.git` (directories, and the `.git` files of worktrees and submodules) are
//!   never selected or entered.
//! - Symbolic links are never followed. A link is kept as a link when its target stays inside
//!   the workspace (see below); otherwise it is left out and reported in
//!   [`Selection::skipped`], as are sockets, FIFOs and devices, and paths that vanish while the
//!   walk runs.
//! - Directories are entered only when some pattern could match below them, so `target` does
//!   not walk `node_modules`.
//!
//! # Links
//! A link's target is judged lexically, without touching the filesystem beyond reading the
//! link: it must be relative, and it may climb with leading `..` components (never above the
//! workspace root, counting from the link's own directory) and then only descend. A `..` after
//! a name (`lib/../x`) is refused too: its meaning depends on whether that name is itself a
//! link, which a lexical check cannot know. Dangling links are kept. [`crate::unpack`] applies
//! the same rule to the links it creates.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

/// What a selected path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory (it is selected with everything below it, or it matched a pattern itself).
    Dir,
    /// A symbolic link, with its target exactly as stored in the link (always relative, and
    /// resolving inside the workspace).
    Symlink(PathBuf),
}

/// One selected path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the workspace root (no `.` or `..` components).
    pub path: PathBuf,
    /// What the path is.
    pub kind: EntryKind,
    /// The size in bytes for files, 0 otherwise.
    pub size: u64,
}

/// The outcome of [`select`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The selected paths, sorted by relative path (component-wise, so a directory comes
    /// right before its contents).
    pub entries: Vec<Entry>,
    /// Paths that matched but were left out, with the reason, for callers to warn about.
    pub skipped: Vec<(PathBuf, String)>,
    /// The sum of the sizes of the selected files.
    pub total_bytes: u64,
}

impl Selection {
    /// The number of regular files in the selection.
    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|e| e.kind == EntryKind::File).count()
    }
}

/// Why [`select`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A pattern breaks one of the pattern rules.
    #[error("pattern `{pattern}`: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A pattern is not a valid glob.
    #[error("pattern `{pattern}` is not a valid glob: {source}")]
    Glob {
        /// The pattern as given.
        pattern: String,
        /// The glob parser's complaint.
        source: globset::Error,
    },
    /// The workspace (or a directory in it) could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Selects the paths under `root` matched by `patterns` (see the module docs for the rules).
///
/// An empty pattern list selects nothing. Errors name the offending pattern or path.
pub fn select(root: &Path, patterns: &[String]) -> Result<Selection, SelectError> {
    let matcher = Matcher::new(patterns)?;
    let mut walk = Walk { root, matcher: &matcher, selection: Selection::default() };
    if !matcher.is_empty() {
        walk.run()?;
    }
    let mut selection = walk.selection;
    selection.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    selection.skipped.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(selection)
}

/// Why a link whose parent directory sits `parent_depth` components below the root (the
/// workspace, or an extraction directory) may not be kept with `target`, or `None` if it may.
///
/// The target is judged lexically, without touching the filesystem: it must be relative, and it
/// may climb with leading `..` components (not above the root) and then only descend. A `..`
/// after a name is refused because its meaning depends on whether that name is itself a link
/// (`dir/..` is the parent of wherever `dir` points), which a lexical check cannot know.
pub(crate) fn link_target_problem(parent_depth: usize, target: &Path) -> Option<String> {
    if target.as_os_str().is_empty() {
        return Some("the link target is empty".to_string());
    }
    let shown = target.display();
    let mut climbs = 0usize;
    let mut descended = false;
    for component in target.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Some(format!(
                    "the link target `{shown}` is absolute: only relative links that stay inside are kept"
                ));
            }
            Component::CurDir => {}
            Component::ParentDir if descended => {
                return Some(format!(
                    "the link target `{shown}` has `..` after a name, which cannot be checked without \
                     following links"
                ));
            }
            Component::ParentDir => {
                climbs += 1;
                if climbs > parent_depth {
                    return Some(format!("the link target `{shown}` leaves the root directory"));
                }
            }
            Component::Normal(_) => descended = true,
        }
    }
    None
}

/// The compiled patterns.
struct Matcher {
    /// Inclusions that match any kind of path.
    includes: GlobSet,
    /// Inclusions written with a trailing `/`: directories only.
    include_dirs: GlobSet,
    /// Exclusions that match any kind of path.
    excludes: GlobSet,
    /// Exclusions written with a trailing `/`: directories only.
    exclude_dirs: GlobSet,
    /// How far each inclusion can reach, to skip directories no inclusion can match below.
    reaches: Vec<Reach>,
}

/// The literal leading components of an inclusion, and how deep it can match.
struct Reach {
    /// The components before the first one with a glob metacharacter.
    literal: Vec<String>,
    /// The number of components of every match, when fixed (no `**`, braces or classes).
    depth: Option<usize>,
}

impl Reach {
    /// Whether this inclusion can match something strictly below the directory `dir`.
    fn may_match_below(&self, dir: &[&OsStr]) -> bool {
        let shared = dir.len().min(self.literal.len());
        if !dir[..shared].iter().zip(&self.literal[..shared]).all(|(d, l)| *d == OsStr::new(l)) {
            return false;
        }
        self.depth.is_none_or(|depth| dir.len() < depth)
    }
}

/// A pattern after normalisation.
struct Parsed {
    /// Whether it started with `!`.
    exclude: bool,
    /// Whether it ended with `/`.
    dirs_only: bool,
    /// The glob, without `!`, `./`, `.` components, empty components or a trailing `/`.
    glob: String,
}

fn parse_pattern(pattern: &str) -> Result<Parsed, SelectError> {
    let refuse = |reason: &str| SelectError::Pattern { pattern: pattern.to_string(), reason: reason.to_string() };
    let (exclude, body) = match pattern.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    if body.is_empty() {
        return Err(refuse("an empty pattern is refused: name a path relative to the workspace"));
    }
    if body.starts_with('/') || Path::new(body).is_absolute() {
        return Err(refuse("absolute paths are refused: artifact and cache paths are relative to the workspace"));
    }
    let dirs_only = body.ends_with('/');
    let mut parts = Vec::new();
    for part in body.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refuse("`..` is refused: paths may not leave the workspace")),
            _ => parts.push(part),
        }
    }
    let glob = if parts.is_empty() { "**".to_string() } else { parts.join("/") };
    Ok(Parsed { exclude, dirs_only, glob })
}

fn is_literal(component: &str) -> bool {
    !component.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

impl Matcher {
    fn new(patterns: &[String]) -> Result<Self, SelectError> {
        let mut includes = GlobSetBuilder::new();
        let mut include_dirs = GlobSetBuilder::new();
        let mut excludes = GlobSetBuilder::new();
        let mut exclude_dirs = GlobSetBuilder::new();
        let mut reaches = Vec::new();
        for pattern in patterns {
            let parsed = parse_pattern(pattern)?;
            let glob = GlobBuilder::new(&parsed.glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| SelectError::Glob { pattern: pattern.clone(), source })?;
            let set = match (parsed.exclude, parsed.dirs_only) {
                (false, false) => &mut includes,
                (false, true) => &mut include_dirs,
                (true, false) => &mut excludes,
                (true, true) => &mut exclude_dirs,
            };
            set.add(glob);
            if !parsed.exclude {
                let components: Vec<&str> = parsed.glob.split('/').collect();
                let literal: Vec<String> =
                    components.iter().take_while(|c| is_literal(c)).map(|c| (*c).to_string()).collect();
                let fixed = !parsed.glob.contains("**") && !parsed.glob.contains(['{', '[', '\\']);
                reaches.push(Reach { literal, depth: fixed.then_some(components.len()) });
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|source| SelectError::Glob { pattern: patterns.join(" "), source })
        };
        Ok(Self {
            includes: build(includes)?,
            include_dirs: build(include_dirs)?,
            excludes: build(excludes)?,
            exclude_dirs: build(exclude_dirs)?,
            reaches,
        })
    }

    fn is_empty(&self) -> bool {
        self.includes.is_empty() && self.include_dirs.is_empty()
    }

    fn included(&self, candidate: &Candidate<'_>, is_dir: bool) -> bool {
        self.includes.is_match_candidate(candidate) || (is_dir && self.include_dirs.is_match_candidate(candidate))
    }

    fn excluded(&self, candidate: &Candidate<'_>, is_dir: bool) -> bool {
        self.excludes.is_match_candidate(candidate) || (is_dir && self.exclude_dirs.is_match_candidate(candidate))
    }

    fn may_match_below(&self, dir: &Path) -> bool {
        let components: Vec<&OsStr> = dir.iter().collect();
        self.reaches.iter().any(|reach| reach.may_match_below(&components))
    }
}

/// The state of one walk.
struct Walk<'a> {
    root: &'a Path,
    matcher: &'a Matcher,
    selection: Selection,
}

/// Whether an I/O error means the path disappeared under the walk.
fn vanished(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

impl Walk<'_> {
    fn run(&mut self) -> Result<(), SelectError> {
        // Directories still to read: the path relative to the root, and whether it lies inside a
        // directory that was selected as a whole.
        let mut pending: Vec<(PathBuf, bool)> = vec![(PathBuf::new(), false)];
        while let Some((dir, inside)) = pending.pop() {
            let abs = self.root.join(&dir);
            let reader = match fs::read_dir(&abs) {
                Ok(reader) => reader,
                Err(err) if vanished(&err) && !dir.as_os_str().is_empty() => {
                    if inside {
                        self.skip(dir, "it vanished while the workspace was being read");
                    }
                    continue;
                }
                Err(source) => return Err(SelectError::Io { path: abs, source }),
            };
            for dirent in reader {
                let dirent = dirent.map_err(|source| SelectError::Io { path: abs.clone(), source })?;
                let name = dirent.file_name();
                if name == ".git" {
                    continue;
                }
                let rel = dir.join(&name);
                let file_type = match dirent.file_type() {
                    Ok(file_type) => file_type,
                    Err(err) if vanished(&err) => {
                        self.skip(rel, "it vanished while the workspace was being read");
                        continue;
                    }
                    Err(source) => return Err(SelectError::Io { path: dirent.path(), source }),
                };
                let is_dir = file_type.is_dir();
                let candidate = Candidate::new(&rel);
                if self.matcher.excluded(&candidate, is_dir) {
                    continue;
                }
                let selected = inside || self.matcher.included(&candidate, is_dir);
                if is_dir {
                    if selected {
                        self.push(rel.clone(), EntryKind::Dir, 0);
                        pending.push((rel, true));
                    } else if self.matcher.may_match_below(&rel) {
                        pending.push((rel, false));
                    }
                } else if !selected {
                    continue;
                } else if file_type.is_file() {
                    match dirent.metadata() {
                        Ok(meta) => {
                            self.selection.total_bytes += meta.len();
                            self.push(rel, EntryKind::File, meta.len());
                        }
                        Err(err) if vanished(&err) => self.skip(rel, "it vanished while the workspace was being read"),
                        Err(source) => return Err(SelectError::Io { path: dirent.path(), source }),
                    }
                } else if file_type.is_symlink() {
                    self.link(dirent.path(), rel, dir.components().count())?;
                } else {
                    self.skip(rel, "it is not a regular file, directory or symbolic link");
                }
            }
        }
        Ok(())
    }

    fn link(&mut self, abs: PathBuf, rel: PathBuf, parent_depth: usize) -> Result<(), SelectError> {
        let target = match fs::read_link(&abs) {
            Ok(target) => target,
            Err(err) if vanished(&err) => {
                self.skip(rel, "it vanished while the workspace was being read");
                return Ok(());
            }
            Err(source) => return Err(SelectError::Io { path: abs, source }),
        };
        match link_target_problem(parent_depth, &target) {
            None => self.push(rel, EntryKind::Symlink(target), 0),
            Some(problem) => {
                let reason = problem.replace("the root directory", "the workspace");
                self.skip(rel, &reason);
            }
        }
        Ok(())
    }

    fn push(&mut self, path: PathBuf, kind: EntryKind, size: u64) {
        self.selection.entries.push(Entry { path, kind, size });
    }

    fn skip(&mut self, path: PathBuf, reason: &str) {
        self.selection.skipped.push((path, reason.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_string()).collect()
    }

    fn write(root: &Path, rel: &str, contents: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("test paths have parents")).expect("create parent");
        fs::write(path, contents).expect("write test file");
    }

    fn paths(selection: &Selection) -> Vec<String> {
        selection.entries.iter().map(|e| e.path.to_string_lossy().into_owned()).collect()
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "src/main.rs", "fn main() {}");
        write(root, "src/lib/util.rs", "pub fn f() {}");
        write(root, "src/notes.txt", "notes");
        write(root, "target/debug/app", "binary");
        write(root, "target/debug/tmp/scratch.o", "object");
        write(root, "target/release/app", "binary");
        write(root, "dist/app.tar.gz", "tarball");
        write(root, "dist/nested/other.tar.gz", "nested tarball");
        write(root, "README.md", "readme");
        write(root, ".git/HEAD", "ref: refs/heads/main");
        write(root, "vendor/.git/config", "[core]");
        write(root, "vendor/lib.rs", "vendored");
        fs::create_dir_all(root.join("target/empty")).expect("empty dir");
        dir
    }

    #[test]
    fn globs_match_files_with_literal_separators() {
        let dir = tree();
        let selection = select(dir.path(), &patterns(&["**/*.rs", "dist/*.tar.gz"])).expect("select");
        assert_eq!(
            paths(&selection),
            ["dist/app.tar.gz", "src/lib/util.rs", "src/main.rs", "vendor/lib.rs"],
            "`*` does not cross `/`, `**` does, and `.git` is never entered"
        );
        assert_eq!(selection.total_bytes, 7 + 13 + 12 + 8);
        assert!(selection.entries.iter().all(|e| e.kind == EntryKind::File));
    }

    #[test]
    fn a_directory_pattern_selects_everything_below_it() {
        let dir = tree();
        for pattern in ["target", "target/", "./target"] {
            let selection = select(dir.path(), &patterns(&[pattern])).expect("select");
            assert_eq!(
                paths(&selection),
                [
                    "target",
                    "target/debug",
                    "target/debug/app",
                    "target/debug/tmp",
                    "target/debug/tmp/scratch.o",
                    "target/empty",
                    "target/release",
                    "target/release/app"
                ],
                "pattern {pattern}"
            );
            assert_eq!(selection.file_count(), 3);
        }
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        let dir = tree();
        let selection = select(dir.path(), &patterns(&["README.md/", "src/"])).expect("select");
        assert!(paths(&selection).iter().all(|p| p.starts_with("src")), "{:?}", paths(&selection));
    }

    #[test]
    fn negation_drops_paths_and_whole_directories() {
        let dir = tree();
        let selection =
            select(dir.path(), &patterns(&["target", "!target/debug/tmp", "!**/release/app"])).expect("select");
        assert_eq!(paths(&selection), ["target", "target/debug", "target/debug/app", "target/empty", "target/release"]);
        let everything = select(dir.path(), &patterns(&["."])).expect("select");
        assert!(paths(&everything).contains(&"README.md".to_string()));
        assert!(!paths(&everything).iter().any(|p| p.contains(".git")), "{:?}", paths(&everything));
        assert!(select(dir.path(), &patterns(&["!target"])).expect("select").entries.is_empty());
    }

    #[test]
    fn git_is_never_selected_even_by_name() {
        let dir = tree();
        let selection = select(dir.path(), &patterns(&[".git", ".git/HEAD", "**/.git/**"])).expect("select");
        assert!(selection.entries.is_empty(), "{:?}", paths(&selection));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        let dir = tree();
        for (pattern, needle) in [
            ("/etc/passwd", "absolute paths are refused"),
            ("../outside", "`..` is refused"),
            ("src/../../x", "`..` is refused"),
            ("!../x", "`..` is refused"),
            ("", "empty pattern"),
            ("!", "empty pattern"),
        ] {
            match select(dir.path(), &patterns(&["src", pattern])) {
                Err(SelectError::Pattern { pattern: p, reason }) => {
                    assert_eq!(p, pattern);
                    assert!(reason.contains(needle), "{pattern}: {reason}");
                }
                other => panic!("{pattern}: expected a refusal, got {other:?}"),
            }
        }
        match select(dir.path(), &patterns(&["src/[z-a"])) {
            Err(err @ SelectError::Glob { .. }) => assert!(err.to_string().contains("src/[z-a"), "{err}"),
            other => panic!("expected a glob error, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_root_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = select(&missing, &patterns(&["**"])).expect_err("missing root");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn links_inside_are_kept_and_links_outside_are_skipped() {
        use std::os::unix::fs::symlink;
        let dir = tree();
        let root = dir.path();
        symlink("main.rs", root.join("src/alias.rs")).expect("link");
        symlink("../target", root.join("src/target-link")).expect("link");
        symlink("../../README.md", root.join("src/lib/readme")).expect("link");
        symlink("../../etc/passwd", root.join("src/escape")).expect("link");
        symlink("/etc/passwd", root.join("src/absolute")).expect("link");
        symlink("lib/../../x", root.join("src/sneaky")).expect("link");
        symlink("missing", root.join("src/dangling")).expect("link");
        let selection = select(root, &patterns(&["src"])).expect("select");
        let links: Vec<(String, PathBuf)> = selection
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Symlink(target) => Some((e.path.to_string_lossy().into_owned(), target.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            links,
            [
                ("src/alias.rs".to_string(), PathBuf::from("main.rs")),
                ("src/dangling".to_string(), PathBuf::from("missing")),
                ("src/lib/readme".to_string(), PathBuf::from("../../README.md")),
                ("src/target-link".to_string(), PathBuf::from("../target")),
            ]
        );
        let skipped: Vec<&str> = selection.skipped.iter().map(|(p, _)| p.to_str().expect("utf-8")).collect();
        assert_eq!(skipped, ["src/absolute", "src/escape", "src/sneaky"]);
        assert!(selection.skipped[0].1.contains("absolute"), "{:?}", selection.skipped);
        assert!(selection.skipped[1].1.contains("leaves the workspace"), "{:?}", selection.skipped);
        assert!(
            !paths(&selection).iter().any(|p| p.starts_with("src/target-link/")),
            "links are not followed: {:?}",
            paths(&selection)
        );
    }

    #[test]
    fn link_targets_are_judged_lexically() {
        assert_eq!(link_target_problem(0, Path::new("a/b")), None);
        assert_eq!(link_target_problem(1, Path::new("../a")), None);
        assert_eq!(link_target_problem(1, Path::new("./../a")), None);
        assert!(link_target_problem(0, Path::new("../a")).is_some());
        assert!(link_target_problem(3, Path::new("a/../b")).is_some());
        assert!(link_target_problem(3, Path::new("/abs")).is_some());
        assert!(link_target_problem(3, Path::new("")).is_some());
    }

    #[test]
    fn literal_patterns_do_not_walk_unrelated_directories() {
        let matcher = Matcher::new(&patterns(&["target", "dist/*.tar.gz", "!x"])).expect("matcher");
        assert!(matcher.may_match_below(Path::new("dist")));
        assert!(!matcher.may_match_below(Path::new("dist/nested")));
        assert!(!matcher.may_match_below(Path::new("node_modules")));
        let deep = Matcher::new(&patterns(&["src/**/*.rs"])).expect("matcher");
        assert!(deep.may_match_below(Path::new("src/a/b/c")));
        assert!(!deep.may_match_below(Path::new("docs")));
        let everything = Matcher::new(&patterns(&["**/*.rs"])).expect("matcher");
        assert!(everything.may_match_below(Path::new("a/b")));
    }
}
