//! Git checkout with libgit2: a per-job workspace at the exact commit of the build (shallow
//! where the transport allows), branch and tag refs, submodules on request, and the commit's
//! metadata for the step environment; agents keep the objects of each repository in a bare
//! cache between jobs (a commit already fetched checks out without a fetch). The server also
//! keeps a bare mirror per job to resolve branches and read the pipeline file at a commit
//! before planning.

use git2::{FetchOptions, Oid, Repository};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// A checkout that failed.
#[derive(Debug, Error)]
pub enum CheckoutError {
    /// libgit2 refused.
    #[error("git: {action} {url}: {message}")]
    Git {
        /// What was being done.
        action: &'static str,
        /// The repository URL.
        url: String,
        /// libgit2's message.
        message: String,
    },
    /// The branch, tag or commit does not exist.
    #[error("{what} not found in {url}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// The repository URL.
        url: String,
    },
    /// No pipeline file at that commit.
    #[error("no pipeline file at {commit} in {url}: looked for {paths}")]
    NoPipeline {
        /// The commit.
        commit: String,
        /// The repository URL.
        url: String,
        /// The paths tried.
        paths: String,
    },
}

/// What to check out.
#[derive(Debug, Clone, Default)]
pub struct CheckoutRequest {
    /// Repository URL (`file://`, `git://`, a path).
    pub url: String,
    /// Exact commit; when absent, the tip of `branch` (or `tag`).
    pub commit: Option<String>,
    /// Branch the commit is on.
    pub branch: Option<String>,
    /// Tag to build.
    pub tag: Option<String>,
    /// History depth (1 by default); 0 fetches everything.
    pub depth: i32,
    /// Also check out submodules.
    pub submodules: bool,
    /// Credentials for HTTP(S) repositories.
    pub credentials: Option<GitCredentials>,
}

/// Credentials for private repositories, from the job's secrets: `GIT_TOKEN` (HTTP(S) Basic,
/// user `GIT_USERNAME` or `x-access-token`), `GIT_SSH_KEY` (a private key for `ssh://` URLs,
/// user from the URL or `git`), and `GIT_SSH_KNOWN_HOSTS` (known_hosts lines the server's host
/// key must match; without it libgit2 checks `~/.ssh/known_hosts`).
#[derive(Clone, Default)]
pub struct GitCredentials {
    /// User name sent with the token.
    pub username: String,
    /// HTTP(S) token.
    pub token: Option<String>,
    /// SSH private key (PEM or OpenSSH format).
    pub ssh_key: Option<String>,
    /// known_hosts lines for SSH host key checking.
    pub known_hosts: Option<String>,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ssh_key", &self.ssh_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl GitCredentials {
    /// The secrets credentials are read from.
    pub const SECRETS: [&str; 4] = ["GIT_TOKEN", "GIT_USERNAME", "GIT_SSH_KEY", "GIT_SSH_KNOWN_HOSTS"];

    /// The credentials a job's secrets name, if any.
    pub fn from_secrets(secrets: &std::collections::BTreeMap<String, String>) -> Option<GitCredentials> {
        let token = secrets.get("GIT_TOKEN").cloned();
        let ssh_key = secrets.get("GIT_SSH_KEY").cloned();
        let known_hosts = secrets.get("GIT_SSH_KNOWN_HOSTS").cloned();
        (token.is_some() || ssh_key.is_some() || known_hosts.is_some()).then(|| GitCredentials {
            username: secrets.get("GIT_USERNAME").cloned().unwrap_or_else(|| "x-access-token".into()),
            token,
            ssh_key,
            known_hosts,
        })
    }
}

/// Checks an SSH host key against known_hosts lines naming `host`.
fn host_key_known(known_hosts: &str, host: &str, key: &[u8]) -> bool {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    known_hosts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(k)) = (fields.next(), fields.next(), fields.next()) else { return false };
        k == encoded
            && hosts.split(',').any(|h| {
                let h = h.trim_start_matches('[');
                h == host || h.split(']').next() == Some(host)
            })
    })
}

/// Fetch options answering an authentication request once with `creds` (a refused credential
/// is not retried forever) and checking SSH host keys against `GIT_SSH_KNOWN_HOSTS`.
fn fetch_options(creds: Option<&GitCredentials>, depth: i32) -> FetchOptions<'_> {
    let mut callbacks = git2::RemoteCallbacks::new();
    let mut asked = false;
    callbacks.credentials(move |_url, user, allowed| {
        if asked {
            return Err(git2::Error::from_str(
                "the repository refused the credentials (the GIT_TOKEN or GIT_SSH_KEY secret)",
            ));
        }
        asked = true;
        let none = || {
            git2::Error::from_str(
                "the repository needs credentials: set a GIT_TOKEN (HTTPS) or GIT_SSH_KEY (SSH) secret for the job",
            )
        };
        let c = creds.ok_or_else(none)?;
        if allowed.contains(git2::CredentialType::SSH_KEY)
            && let Some(key) = &c.ssh_key
        {
            return git2::Cred::ssh_key_from_memory(user.unwrap_or("git"), None, key, None);
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
            && let Some(token) = &c.token
        {
            return git2::Cred::userpass_plaintext(&c.username, token);
        }
        Err(none())
    });
    let known_hosts = creds.and_then(|c| c.known_hosts.clone());
    callbacks.certificate_check(move |cert, host| match (cert.as_hostkey().and_then(|k| k.hostkey()), &known_hosts) {
        (Some(key), Some(known)) if host_key_known(known, host, key) => Ok(git2::CertificateCheckStatus::CertificateOk),
        (Some(_), Some(_)) => {
            Err(git2::Error::from_str(&format!("the SSH host key of {host} is not in the GIT_SSH_KNOWN_HOSTS secret")))
        }
        _ => Ok(git2::CertificateCheckStatus::CertificatePassthrough),
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    if depth > 0 {
        opts.depth(depth);
    }
    opts
}

/// The commit that was checked out, for `GIT_*` variables and the `git` context.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommitInfo {
    /// Full SHA.
    pub sha: String,
    /// First 8 characters.
    pub short_sha: String,
    /// Branch, if known.
    pub branch: String,
    /// Tag, if any.
    pub tag: String,
    /// Author name.
    pub author: String,
    /// Author e-mail.
    pub author_email: String,
    /// Commit message.
    pub message: String,
}

impl CommitInfo {
    /// The step environment: `GIT_COMMIT`, `GIT_SHORT_COMMIT`, `GIT_BRANCH`, `GIT_TAG`,
    /// `GIT_AUTHOR`, `GIT_AUTHOR_EMAIL`, `GIT_MESSAGE`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("GIT_COMMIT", &self.sha),
            ("GIT_SHORT_COMMIT", &self.short_sha),
            ("GIT_BRANCH", &self.branch),
            ("GIT_TAG", &self.tag),
            ("GIT_AUTHOR", &self.author),
            ("GIT_AUTHOR_EMAIL", &self.author_email),
            ("GIT_MESSAGE", &self.message),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
    }
}

fn git_err<'a>(action: &'static str, url: &'a str) -> impl Fn(git2::Error) -> CheckoutError + 'a {
    move |e| {
        let mut message = e.message().to_string();
        if message.contains("hostkey") {
            message.push_str(
                ": the server's host key must match the job's GIT_SSH_KNOWN_HOSTS secret (or ~/.ssh/known_hosts)",
            );
        }
        CheckoutError::Git { action, url: url.to_string(), message }
    }
}

fn refspecs(req: &CheckoutRequest) -> Vec<String> {
    match (&req.tag, &req.branch) {
        (Some(tag), _) => vec![format!("+refs/tags/{tag}:refs/tags/{tag}")],
        (None, Some(branch)) => vec![format!("+refs/heads/{branch}:refs/remotes/origin/{branch}")],
        (None, None) => vec!["+refs/heads/*:refs/remotes/origin/*".into(), "+refs/tags/*:refs/tags/*".into()],
    }
}

/// Fetches `specs`, shallow when `depth > 0` and the transport supports it (libgit2's local
/// transport does not: it then fetches in full).
fn fetch(
    repo: &Repository,
    url: &str,
    specs: &[String],
    depth: i32,
    creds: Option<&GitCredentials>,
) -> Result<(), CheckoutError> {
    let mut remote = repo.remote_anonymous(url).map_err(git_err("open remote", url))?;
    match remote.fetch(specs, Some(&mut fetch_options(creds, depth)), None) {
        Ok(()) => Ok(()),
        Err(e) if depth > 0 && e.class() != git2::ErrorClass::Http => {
            tracing::debug!(url, "shallow fetch failed ({}), fetching in full", e.message());
            remote.fetch(specs, Some(&mut fetch_options(creds, 0)), None).map_err(git_err("fetch", url))
        }
        Err(e) => Err(git_err("fetch", url)(e)),
    }
}

fn find_commit<'r>(repo: &'r Repository, req: &CheckoutRequest) -> Result<git2::Commit<'r>, CheckoutError> {
    let url = &req.url;
    let oid = match (&req.commit, &req.tag, &req.branch) {
        (Some(sha), _, _) => Oid::from_str(sha).map_err(git_err("parse commit", url))?,
        (None, Some(tag), _) => repo
            .refname_to_id(&format!("refs/tags/{tag}"))
            .map_err(|_| CheckoutError::NotFound { what: format!("tag `{tag}`"), url: url.clone() })?,
        (None, None, Some(branch)) => repo
            .refname_to_id(&format!("refs/remotes/origin/{branch}"))
            .map_err(|_| CheckoutError::NotFound { what: format!("branch `{branch}`"), url: url.clone() })?,
        (None, None, None) => {
            return Err(CheckoutError::NotFound { what: "a branch, tag or commit to build".into(), url: url.clone() });
        }
    };
    let object = repo
        .find_object(oid, None)
        .map_err(|_| CheckoutError::NotFound { what: format!("commit {oid}"), url: url.clone() })?;
    object.peel_to_commit().map_err(git_err("peel to commit", url))
}

fn info(commit: &git2::Commit<'_>, req: &CheckoutRequest) -> CommitInfo {
    let sha = commit.id().to_string();
    let author = commit.author();
    CommitInfo {
        short_sha: sha.chars().take(8).collect(),
        sha,
        branch: req.branch.clone().unwrap_or_default(),
        tag: req.tag.clone().unwrap_or_default(),
        author: author.name().unwrap_or_default().to_string(),
        author_email: author.email().unwrap_or_default().to_string(),
        message: commit.message().unwrap_or_default().trim_end().to_string(),
    }
}

/// Creates the workspace's repository in `dest`, without copying git's templates (a dozen
/// sample hooks per job that nothing runs).
fn init_workspace(dest: &Path) -> Result<Repository, git2::Error> {
    Repository::init_opts(dest, git2::RepositoryInitOptions::new().external_template(false))
}

/// Checks out `req` into `dest` (created if needed), fetching only what it needs.
pub fn checkout(req: &CheckoutRequest, dest: &Path) -> Result<CommitInfo, CheckoutError> {
    let url = &req.url;
    let repo = init_workspace(dest).map_err(git_err("init", url))?;
    let mut specs = refspecs(req);
    if let Some(sha) = &req.commit
        && req.branch.is_none()
        && req.tag.is_none()
    {
        specs = vec![sha.clone()];
    }
    let fetched = fetch(&repo, url, &specs, req.depth, req.credentials.as_ref());
    let commit = match (fetched, find_commit(&repo, req)) {
        (Ok(()), Ok(c)) => c,
        // The commit is not at the tip that was fetched (or the server refuses fetching a SHA):
        // fetch the whole history of every branch and tag, then look again.
        _ => {
            let all = vec!["+refs/heads/*:refs/remotes/origin/*".to_string(), "+refs/tags/*:refs/tags/*".to_string()];
            fetch(&repo, url, &all, 0, req.credentials.as_ref())?;
            find_commit(&repo, req)?
        }
    };
    repo.set_head_detached(commit.id()).map_err(git_err("detach HEAD", url))?;
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).map_err(git_err("check out", url))?;
    if req.submodules {
        for mut sub in repo.submodules().map_err(git_err("list submodules", url))? {
            sub.update(true, None).map_err(git_err("update submodule", url))?;
        }
    }
    Ok(info(&commit, req))
}

/// The lock serialising fetches into the repository at `dir` within this process (two jobs
/// fetching into one repository at once would race for its ref locks).
fn dir_lock(dir: &Path) -> Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<std::sync::Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    LOCKS.lock().unwrap_or_else(|e| e.into_inner()).entry(dir.to_path_buf()).or_default().clone()
}

/// Where under `root` the object cache of `req`'s repository lives: one bare repository per
/// URL and credentials (a job without the credentials never reads objects fetched with them).
pub fn cache_dir(root: &Path, req: &CheckoutRequest) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(req.url.as_bytes());
    if let Some(c) = &req.credentials {
        for part in [Some(&c.username), c.token.as_ref(), c.ssh_key.as_ref(), c.known_hosts.as_ref()] {
            h.update([0u8]);
            h.update(part.map_or(&b""[..], |p| p.as_bytes()));
        }
    }
    root.join(hex::encode(&h.finalize()[..12]))
}

/// Checks out `req` into `dest` like [`checkout`], with the objects kept in the bare repository
/// `cache` between jobs: the workspace's repository borrows them (`objects/info/alternates`,
/// as `git clone --reference` does), so a commit already fetched is checked out without a
/// fetch. Only for an exact commit (a branch tip may have moved) and without submodules;
/// other requests take [`checkout`].
pub fn checkout_cached(req: &CheckoutRequest, dest: &Path, cache: &Path) -> Result<CommitInfo, CheckoutError> {
    let Some(oid) = cacheable(req)? else {
        return checkout(req, dest);
    };
    let url = &req.url;
    fill_cache(req, cache, oid)?;
    let repo = init_workspace(dest).map_err(git_err("init", url))?;
    std::fs::write(repo.path().join("objects/info/alternates"), alternates(cache)).map_err(|e| CheckoutError::Git {
        action: "write alternates",
        url: url.clone(),
        message: e.to_string(),
    })?;
    // Open again: libgit2 reads the alternates when it opens the object database.
    let repo = Repository::open(dest).map_err(git_err("open", url))?;
    detach_at(&repo, req, oid, false)
}

/// Checks out `req` into `dest`, a workspace that [`checkout_cached`] (or this) made for the
/// same cache and an earlier job used: the repository's state a job could have changed goes
/// (its config is written again; hooks, info, logs and every ref but the branch's are
/// removed), HEAD moves to the commit, tracked files are reset and untracked and ignored ones
/// removed (as `git clean -ffdx`), so the job sees exactly the commit while files that did not
/// change are not written again. A workspace of another cache is refused (the caller then
/// starts afresh).
pub fn checkout_reused(req: &CheckoutRequest, dest: &Path, cache: &Path) -> Result<CommitInfo, CheckoutError> {
    let url = &req.url;
    let refused =
        |message: &str| CheckoutError::Git { action: "reuse workspace", url: url.clone(), message: message.into() };
    let oid = cacheable(req)?.ok_or_else(|| refused("only an exact commit without submodules reuses a workspace"))?;
    let git_dir = dest.join(".git");
    // Only a real directory (a job could have swapped `.git` or its ref and object stores for
    // links to elsewhere).
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if !["", "refs", "objects"].iter().all(|d| real_dir(&git_dir.join(d))) {
        return Err(refused("`.git` is not the workspace's own directory"));
    }
    if std::fs::read_to_string(git_dir.join("objects/info/alternates")).ok().as_deref() != Some(&alternates(cache)) {
        return Err(refused("the workspace borrows from another cache"));
    }
    fill_cache(req, cache, oid)?;
    for leftover in ["hooks", "info", "logs", "modules", "worktrees", "rr-cache"] {
        let _ = std::fs::remove_dir_all(git_dir.join(leftover));
    }
    for leftover in ["packed-refs", "FETCH_HEAD", "ORIG_HEAD", "MERGE_HEAD", "CHERRY_PICK_HEAD", "description"] {
        let _ = std::fs::remove_file(git_dir.join(leftover));
    }
    // Rewritten only when changed (a new file costs the file system more than reading it),
    // removed first: writing through a link the job left would change its target.
    let config = git_dir.join("config");
    let unchanged = std::fs::symlink_metadata(&config).is_ok_and(|m| m.is_file())
        && std::fs::read(&config).is_ok_and(|c| c == WORKSPACE_CONFIG.as_bytes());
    if !unchanged {
        let _ = std::fs::remove_file(&config);
        std::fs::write(&config, WORKSPACE_CONFIG).map_err(|e| CheckoutError::Git {
            action: "reset config",
            url: url.clone(),
            message: e.to_string(),
        })?;
    }
    // libgit2 writes HEAD, the index and refs through a link: one a job left in their place
    // goes (HEAD is written again, detached at the commit).
    let keep = req.branch.as_ref().map(|b| format!("refs/remotes/origin/{b}"));
    let linked = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_file());
    let head = git_dir.join("HEAD");
    if linked(&head) {
        let _ = std::fs::remove_file(&head);
        std::fs::write(&head, format!("{oid}\n")).map_err(|e| CheckoutError::Git {
            action: "reset HEAD",
            url: url.clone(),
            message: e.to_string(),
        })?;
    }
    for file in std::iter::once(git_dir.join("index")).chain(keep.as_ref().map(|k| git_dir.join(k))) {
        if linked(&file) {
            let _ = std::fs::remove_file(&file);
        }
    }
    let repo = Repository::open(dest).map_err(git_err("open", url))?;
    let names: Vec<String> = repo
        .references()
        .map_err(git_err("list refs", url))?
        .flatten()
        .filter_map(|r| r.name().ok().map(str::to_string))
        .collect();
    for name in names.iter().filter(|n| Some(*n) != keep.as_ref()) {
        if let Ok(mut r) = repo.find_reference(name) {
            r.delete().map_err(git_err("remove ref", url))?;
        }
    }
    // Untracked and ignored entries go first (the checkout below leaves nested repositories).
    let mut which = git2::StatusOptions::new();
    which.include_untracked(true).include_ignored(true).recurse_untracked_dirs(false).exclude_submodules(true);
    let statuses = repo.statuses(Some(&mut which)).map_err(git_err("list untracked files", url))?;
    let clean = statuses.is_empty();
    let leftovers: Vec<PathBuf> = statuses
        .iter()
        .filter(|e| e.status().intersects(git2::Status::WT_NEW | git2::Status::IGNORED))
        .filter_map(|e| e.path().ok().map(|p| dest.join(p.trim_end_matches('/'))))
        .collect();
    for path in leftovers {
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => Ok(()),
        };
        removed.map_err(|e| CheckoutError::Git {
            action: "remove untracked files",
            url: url.clone(),
            message: e.to_string(),
        })?;
    }
    drop(statuses);
    // Already exactly the commit (HEAD detached at it, the branch's ref on it, nothing changed,
    // added or left over): nothing to write.
    let head_at = repo.head_detached().unwrap_or(false) && repo.head().ok().and_then(|h| h.target()) == Some(oid);
    let branch_at = keep.as_ref().is_none_or(|k| repo.refname_to_id(k).ok() == Some(oid));
    if clean && head_at && branch_at {
        return Ok(info(&find_commit(&repo, req)?, req));
    }
    detach_at(&repo, req, oid, true)
}

/// The `.git/config` of a workspace (what `git init` writes).
const WORKSPACE_CONFIG: &str =
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n";

/// The commit of a request the object cache can serve (an exact commit, no submodules, no tag).
fn cacheable(req: &CheckoutRequest) -> Result<Option<Oid>, CheckoutError> {
    match req.commit.as_deref().filter(|_| !req.submodules && req.tag.is_none()) {
        Some(sha) => Ok(Some(Oid::from_str(sha).map_err(git_err("parse commit", &req.url))?)),
        None => Ok(None),
    }
}

/// The `objects/info/alternates` line of a workspace borrowing from `cache`.
fn alternates(cache: &Path) -> String {
    let objects = std::fs::canonicalize(cache.join("objects")).unwrap_or_else(|_| cache.join("objects"));
    format!("{}\n", objects.display())
}

/// Points the branch's remote ref and a detached HEAD at `oid` and checks it out (`clean`:
/// also removing untracked and ignored files).
fn detach_at(repo: &Repository, req: &CheckoutRequest, oid: Oid, clean: bool) -> Result<CommitInfo, CheckoutError> {
    let url = &req.url;
    let commit = find_commit(repo, req)?;
    if let Some(branch) = &req.branch {
        repo.reference(&format!("refs/remotes/origin/{branch}"), oid, true, "chengis checkout")
            .map_err(git_err("set branch ref", url))?;
    }
    repo.set_head_detached(oid).map_err(git_err("detach HEAD", url))?;
    let mut how = git2::build::CheckoutBuilder::new();
    how.force();
    if clean {
        how.remove_untracked(true).remove_ignored(true);
    }
    repo.checkout_head(Some(&mut how)).map_err(git_err("check out", url))?;
    Ok(info(&commit, req))
}

/// Makes sure the bare repository `cache` holds commit `oid` of `req`'s repository, fetching
/// it if not (serialised per cache within the process).
fn fill_cache(req: &CheckoutRequest, cache: &Path, oid: Oid) -> Result<(), CheckoutError> {
    let url = &req.url;
    let lock = dir_lock(cache);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    let cached = match Repository::open_bare(cache) {
        Ok(r) => r,
        Err(_) => Repository::init_opts(cache, git2::RepositoryInitOptions::new().bare(true).external_template(false))
            .map_err(git_err("init cache", url))?,
    };
    if cached.find_commit(oid).is_err() {
        let mut specs = refspecs(req);
        specs.push(oid.to_string());
        if fetch(&cached, url, &specs, 0, req.credentials.as_ref()).is_err() || cached.find_commit(oid).is_err() {
            let all = vec!["+refs/heads/*:refs/remotes/origin/*".to_string(), "+refs/tags/*:refs/tags/*".to_string()];
            fetch(&cached, url, &all, 0, req.credentials.as_ref())?;
        }
    }
    Ok(())
}

/// A bare mirror of a job's repository, for resolving refs and reading files at a commit.
pub struct Mirror {
    repo: Repository,
    url: String,
}

impl Mirror {
    /// Opens (creating it) the mirror in `dir` and fetches every branch and tag. Updates of one
    /// mirror are serialised within the process: two builds planned at once would otherwise
    /// race for the mirror's ref locks.
    pub fn update(dir: &Path, url: &str, creds: Option<&GitCredentials>) -> Result<Mirror, CheckoutError> {
        Mirror::update_for(dir, url, creds, None)
    }

    /// Like [`Mirror::update`], but without the fetch when `commit` is given and already in
    /// the mirror (a trigger naming a commit it has, such as a retry or a second job of the same
    /// push): a commit's content never changes.
    pub fn update_for(
        dir: &Path,
        url: &str,
        creds: Option<&GitCredentials>,
        commit: Option<&str>,
    ) -> Result<Mirror, CheckoutError> {
        let lock = dir_lock(dir);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let repo = match Repository::open_bare(dir) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(dir).map_err(git_err("init mirror", url))?,
        };
        let mirror = Mirror { repo, url: url.to_string() };
        if let Some(commit) = commit.filter(|c| !c.is_empty())
            && mirror.resolve_commit(commit).is_ok()
        {
            return Ok(mirror);
        }
        let repo = mirror.repo;
        let specs = vec!["+refs/heads/*:refs/remotes/origin/*".to_string(), "+refs/tags/*:refs/tags/*".to_string()];
        fetch(&repo, url, &specs, 0, creds)?;
        Ok(Mirror { repo, url: url.to_string() })
    }

    /// The commit a branch points at.
    pub fn branch_tip(&self, branch: &str) -> Result<String, CheckoutError> {
        self.repo
            .refname_to_id(&format!("refs/remotes/origin/{branch}"))
            .map(|oid| oid.to_string())
            .map_err(|_| CheckoutError::NotFound { what: format!("branch `{branch}`"), url: self.url.clone() })
    }

    /// The full id of the commit `commit` names: a full id, or an abbreviated one (Bitbucket's
    /// pull request events carry 12 hex digits).
    pub fn resolve_commit(&self, commit: &str) -> Result<String, CheckoutError> {
        let not_found = || CheckoutError::NotFound { what: format!("commit {commit}"), url: self.url.clone() };
        if !(7..=64).contains(&commit.len()) || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let object = self.repo.revparse_single(commit).map_err(|_| not_found())?;
        let commit_obj = object.peel_to_commit().map_err(|_| not_found())?;
        Ok(commit_obj.id().to_string())
    }

    /// The paths that differ between `before` and `head`. Without `before` (a new branch), or
    /// when `before` is not an ancestor of `head` (a force push), the comparison starts where
    /// `head` left `default_branch`.
    pub fn changed_files(&self, before: &str, head: &str, default_branch: &str) -> Result<Vec<String>, CheckoutError> {
        let err = git_err("compare commits", &self.url);
        let head_oid = Oid::from_str(&self.resolve_commit(head)?).map_err(&err)?;
        let ancestor = (!before.is_empty())
            .then(|| self.resolve_commit(before).ok())
            .flatten()
            .and_then(|b| Oid::from_str(&b).ok())
            .filter(|b| self.repo.graph_descendant_of(head_oid, *b).unwrap_or(false));
        let base = match ancestor {
            Some(b) => b,
            None => {
                let tip = Oid::from_str(&self.branch_tip(default_branch)?).map_err(&err)?;
                self.repo.merge_base(tip, head_oid).map_err(&err)?
            }
        };
        let old = self.repo.find_commit(base).and_then(|c| c.tree()).map_err(&err)?;
        let new = self.repo.find_commit(head_oid).and_then(|c| c.tree()).map_err(&err)?;
        let diff = self.repo.diff_tree_to_tree(Some(&old), Some(&new), None).map_err(&err)?;
        let mut files = Vec::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(p) = file.path().and_then(|p| p.to_str())
                    && !files.iter().any(|f| f == p)
                {
                    files.push(p.to_string());
                }
            }
        }
        Ok(files)
    }

    /// The message and author (`Name <email>`) of `commit`.
    pub fn commit_info(&self, commit: &str) -> Result<(String, String), CheckoutError> {
        let oid = Oid::from_str(commit).map_err(git_err("parse commit", &self.url))?;
        let c = self
            .repo
            .find_commit(oid)
            .map_err(|_| CheckoutError::NotFound { what: format!("commit {commit}"), url: self.url.clone() })?;
        let author = c.author();
        let who = format!("{} <{}>", author.name().unwrap_or_default(), author.email().unwrap_or_default());
        Ok((c.message().unwrap_or_default().trim_end().to_string(), who))
    }

    /// The first of `paths` that exists at `commit`, with its text.
    pub fn read_first(&self, commit: &str, paths: &[&str]) -> Result<(String, String), CheckoutError> {
        let oid = Oid::from_str(commit).map_err(git_err("parse commit", &self.url))?;
        let commit_obj = self
            .repo
            .find_commit(oid)
            .map_err(|_| CheckoutError::NotFound { what: format!("commit {commit}"), url: self.url.clone() })?;
        let tree = commit_obj.tree().map_err(git_err("read tree", &self.url))?;
        for p in paths {
            if let Ok(entry) = tree.get_path(Path::new(p))
                && let Ok(blob) = self.repo.find_blob(entry.id())
            {
                return Ok((p.to_string(), String::from_utf8_lossy(blob.content()).into_owned()));
            }
        }
        Err(CheckoutError::NoPipeline { commit: commit.to_string(), url: self.url.clone(), paths: paths.join(", ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository with two commits on `main` and a tag on the first.
    fn repo() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-qm", "first"]);
        let first = git(dir.path(), &["rev-parse", "HEAD"]);
        git(dir.path(), &["tag", "v1"]);
        std::fs::write(dir.path().join("a.txt"), "two").unwrap();
        std::fs::write(dir.path().join("chengis.yml"), "jobs: {}\n").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-qm", "second\n\nbody"]);
        (dir, first)
    }

    #[test]
    fn cached_checkout_fetches_once_and_git_works_in_the_workspace() {
        let (src, first) = repo();
        let url = format!("file://{}", src.path().display());
        let second = git(src.path(), &["rev-parse", "HEAD"]);
        let root = tempfile::tempdir().unwrap();
        let req = |commit: &str| CheckoutRequest {
            url: url.clone(),
            branch: Some("main".into()),
            commit: Some(commit.to_string()),
            depth: 1,
            ..Default::default()
        };
        let cache = cache_dir(root.path(), &req(&first));
        let ws = tempfile::tempdir().unwrap();
        let got = checkout_cached(&req(&second), ws.path(), &cache).unwrap();
        assert_eq!((got.sha.as_str(), got.message.as_str()), (second.as_str(), "second\n\nbody"));
        assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), "two");
        // The workspace is a working git repository (objects borrowed from the cache).
        assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), second);
        assert_eq!(git(ws.path(), &["rev-parse", "origin/main"]), second);
        assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
        assert_eq!(git(ws.path(), &["log", "--format=%s"]), "second\nfirst");

        // Both commits are cached now: with the origin gone, they still check out.
        let moved = tempfile::tempdir().unwrap();
        std::fs::rename(src.path(), moved.path().join("gone")).unwrap();
        for (commit, text) in [(&first, "one"), (&second, "two")] {
            let ws = tempfile::tempdir().unwrap();
            assert_eq!(checkout_cached(&req(commit), ws.path(), &cache).unwrap().sha, *commit);
            assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), text);
        }
        // A commit the cache lacks is fetched (here: fails, the origin is gone).
        let ws = tempfile::tempdir().unwrap();
        let missing = "0123456789012345678901234567890123456789";
        assert!(checkout_cached(&req(missing), ws.path(), &cache).is_err());

        // A reused workspace: what a job left (files, ignored files, a nested repository, hooks,
        // config, branches) is gone, the commit is exactly there, git still works.
        let ws = tempfile::tempdir().unwrap();
        checkout_cached(&req(&first), ws.path(), &cache).unwrap();
        std::fs::write(ws.path().join("a.txt"), "changed").unwrap();
        std::fs::write(ws.path().join(".gitignore"), "*.log\n").unwrap();
        std::fs::write(ws.path().join("build.log"), "ignored").unwrap();
        std::fs::create_dir_all(ws.path().join("out/deep")).unwrap();
        std::fs::write(ws.path().join("out/deep/x.bin"), "x").unwrap();
        git(&ws.path().join("out"), &["init", "-q"]);
        std::fs::create_dir_all(ws.path().join(".git/hooks")).unwrap();
        std::fs::write(ws.path().join(".git/hooks/pre-commit"), "#!/bin/sh\nexit 1\n").unwrap();
        git(ws.path(), &["config", "user.name", "Mallory"]);
        git(ws.path(), &["branch", "planted"]);
        std::fs::write(ws.path().join("staged.txt"), "staged").unwrap();
        git(ws.path(), &["add", "staged.txt"]);
        let got = checkout_reused(&req(&second), ws.path(), &cache).unwrap();
        assert_eq!(got.sha, second);
        let mut names: Vec<String> =
            std::fs::read_dir(ws.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, [".git", "a.txt", "chengis.yml"]);
        assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), "two");
        assert!(!ws.path().join(".git/hooks").exists());
        assert!(!std::fs::read_to_string(ws.path().join(".git/config")).unwrap().contains("Mallory"));
        assert_eq!(git(ws.path(), &["branch", "--list", "planted"]), "");
        assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), second);
        assert_eq!(git(ws.path(), &["status", "--porcelain", "--ignored"]), "");
        // Reused again for the same commit, untouched: nothing is written (same files, same
        // inodes and times); a changed tracked file alone is still put back.
        use std::os::unix::fs::MetadataExt;
        let stamp = || {
            [".git/index", ".git/HEAD", ".git/config", "a.txt"].map(|f| {
                let m = std::fs::metadata(ws.path().join(f)).unwrap();
                (m.ino(), m.mtime(), m.mtime_nsec())
            })
        };
        let before = stamp();
        assert_eq!(checkout_reused(&req(&second), ws.path(), &cache).unwrap().sha, second);
        assert_eq!(stamp(), before);
        std::fs::write(ws.path().join("a.txt"), "changed again").unwrap();
        assert_eq!(checkout_reused(&req(&second), ws.path(), &cache).unwrap().sha, second);
        assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), "two");
        assert_eq!(git(ws.path(), &["status", "--porcelain", "--ignored"]), "");
        // HEAD left as a link (here to a file with the right content) is replaced by a plain
        // file, and the file it pointed to is not written.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::copy(ws.path().join(".git/HEAD"), elsewhere.path().join("HEAD")).unwrap();
        std::fs::remove_file(ws.path().join(".git/HEAD")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("HEAD"), ws.path().join(".git/HEAD")).unwrap();
        assert_eq!(checkout_reused(&req(&second), ws.path(), &cache).unwrap().sha, second);
        assert!(std::fs::symlink_metadata(ws.path().join(".git/HEAD")).unwrap().is_file());
        assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), second);
        assert_eq!(std::fs::read_to_string(elsewhere.path().join("HEAD")).unwrap(), format!("{second}\n"));
        let planted = std::fs::metadata(elsewhere.path().join("HEAD")).unwrap().mtime();
        std::fs::remove_file(ws.path().join(".git/HEAD")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("HEAD"), ws.path().join(".git/HEAD")).unwrap();
        std::fs::write(ws.path().join("a.txt"), "changed once more").unwrap();
        assert_eq!(checkout_reused(&req(&first), ws.path(), &cache).unwrap().sha, first);
        assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(elsewhere.path().join("HEAD")).unwrap(), format!("{second}\n"));
        assert_eq!(std::fs::metadata(elsewhere.path().join("HEAD")).unwrap().mtime(), planted);
        assert!(checkout_reused(&req(&second), ws.path(), &cache).is_ok());
        // A workspace borrowing from another cache is refused (the agent starts afresh).
        let other = tempfile::tempdir().unwrap();
        assert!(checkout_reused(&req(&second), ws.path(), other.path()).is_err());

        // Other credentials, another cache: objects fetched with a token are not shared.
        let mut with_token = req(&first);
        with_token.credentials = Some(GitCredentials { token: Some("t".into()), ..Default::default() });
        assert_ne!(cache_dir(root.path(), &with_token), cache);
    }

    #[test]
    fn checks_out_branch_tip_exact_commit_and_tag() {
        let (src, first) = repo();
        let url = format!("file://{}", src.path().display());
        let ws = tempfile::tempdir().unwrap();
        let tip = checkout(
            &CheckoutRequest { url: url.clone(), branch: Some("main".into()), depth: 1, ..Default::default() },
            ws.path(),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), "two");
        assert_eq!(tip.message, "second\n\nbody");
        assert_eq!(
            (tip.author.as_str(), tip.author_email.as_str(), tip.branch.as_str()),
            ("Ada", "ada@example.com", "main")
        );

        let ws = tempfile::tempdir().unwrap();
        let old = checkout(
            &CheckoutRequest {
                url: url.clone(),
                branch: Some("main".into()),
                commit: Some(first.clone()),
                depth: 1,
                ..Default::default()
            },
            ws.path(),
        )
        .unwrap();
        assert_eq!(old.sha, first);
        assert_eq!(std::fs::read_to_string(ws.path().join("a.txt")).unwrap(), "one");

        let ws = tempfile::tempdir().unwrap();
        let tagged = checkout(
            &CheckoutRequest { url: url.clone(), tag: Some("v1".into()), depth: 1, ..Default::default() },
            ws.path(),
        )
        .unwrap();
        assert_eq!((tagged.sha.as_str(), tagged.tag.as_str()), (first.as_str(), "v1"));
        assert!(tagged.env().contains(&("GIT_SHORT_COMMIT".to_string(), first[..8].to_string())));

        let ws = tempfile::tempdir().unwrap();
        let err =
            checkout(&CheckoutRequest { url, branch: Some("nope".into()), depth: 1, ..Default::default() }, ws.path())
                .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn https_transport_is_built_in() {
        assert!(git2::Version::get().https(), "libgit2 was built without a TLS backend");
    }

    #[test]
    fn mirror_resolves_branches_and_reads_files_at_a_commit() {
        let (src, first) = repo();
        let url = format!("file://{}", src.path().display());
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::update(&dir.path().join("m.git"), &url, None).unwrap();
        let tip = mirror.branch_tip("main").unwrap();
        let (path, text) = mirror.read_first(&tip, &[".chengis/workflow.yml", "chengis.yml"]).unwrap();
        assert_eq!((path.as_str(), text.as_str()), ("chengis.yml", "jobs: {}\n"));
        let err = mirror.read_first(&first, &["chengis.yml"]).unwrap_err();
        assert!(matches!(err, CheckoutError::NoPipeline { .. }));
    }

    #[test]
    fn a_commit_already_in_the_mirror_is_not_fetched_again() {
        let (src, first) = repo();
        let url = format!("file://{}", src.path().display());
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.git");
        Mirror::update(&m, &url, None).unwrap();
        // The repository goes away: only a fetch would notice.
        let gone = tempfile::tempdir().unwrap();
        std::fs::rename(src.path(), gone.path().join("moved")).unwrap();
        let mirror = Mirror::update_for(&m, &url, None, Some(&first)).unwrap();
        assert_eq!(mirror.resolve_commit(&first[..12]).unwrap(), first);
        assert!(Mirror::update_for(&m, &url, None, Some(&"1".repeat(40))).is_err());
        assert!(Mirror::update_for(&m, &url, None, None).is_err());
    }
}
