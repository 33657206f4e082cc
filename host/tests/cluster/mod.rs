//! Tests across real hosts: Chengis (and PostgreSQL, git servers, ...) as containers on a private
//! Docker network, driven through the `docker` CLI with only the standard library.
//!
//! A test creates a [`Network`] (a uniquely named bridge network), runs containers on it with
//! [`Network::run`] (each reachable from the others by its short name), cuts and restores their
//! network or kills them through [`Container`], and reaches services the test itself runs on the
//! host through [`Network::gateway`], the host's address on that network. Dropping the network
//! removes it with all its containers, also when the test panics; objects a crashed run left
//! behind (its process is gone) are removed by the next [`Network::create`].
//!
//! The images come from `tests/images/*.sh` (`docker import`, no registry). Tests start with
//! `if !cluster::require_docker() { return; }`. Helpers panic with the docker command and its
//! stderr when docker fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Label on every network and container made here; its value is the prefix given to
/// [`Network::create`].
pub const LABEL: &str = "chengis.test.cluster";
/// Label naming the process that made the object (`host/pid.start-time`): objects whose process is
/// gone are leftovers of a crashed run.
const OWNER_LABEL: &str = "chengis.test.owner";
/// Label on each container naming its network, for removing them together.
const NETWORK_LABEL: &str = "chengis.test.network";

/// True when a Docker engine answers `docker info` (asked once per process).
pub fn docker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// True when Docker is available. Otherwise panics when the environment variable
/// `CHENGIS_TEST_REQUIRE` contains `docker` (CI), and returns false (after saying so on stderr)
/// so the test can skip itself.
pub fn require_docker() -> bool {
    if docker_available() {
        return true;
    }
    let required = std::env::var("CHENGIS_TEST_REQUIRE").unwrap_or_default();
    assert!(
        !required.contains("docker"),
        "CHENGIS_TEST_REQUIRE={required} names docker, but no Docker engine answers `docker info`"
    );
    eprintln!("skipping a cluster test: no Docker engine answers `docker info`");
    false
}

/// A user-defined bridge network with a unique name; dropping it removes it and every container
/// [`Network::run`] started on it.
#[derive(Debug)]
pub struct Network {
    name: String,
    prefix: String,
    gateway: String,
}

impl Network {
    /// Creates a network named `<prefix>-<pid>-<n>-<suffix>`, labelled [`LABEL`]`=<prefix>`,
    /// after removing the networks and containers that earlier runs left behind (made here by a
    /// process that no longer exists). `prefix` must be a valid Docker name (`[a-zA-Z0-9_.-]`).
    pub fn create(prefix: &str) -> Network {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let name = format!("{prefix}-{}-{n}-{:04x}", std::process::id(), (nanos >> 10) & 0xffff);
        let (cluster, owner) = (format!("{LABEL}={prefix}"), format!("{OWNER_LABEL}={}", owner()));
        docker(&["network", "create", "--label", &cluster, "--label", &owner, &name]);
        // From here on the network is removed on drop, even when reading its gateway fails.
        let mut network = Network { name, prefix: prefix.to_string(), gateway: String::new() };
        let gateways =
            docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}} {{end}}", &network.name]);
        network.gateway = gateways
            .split_whitespace()
            .find(|g| g.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()))
            .unwrap_or_else(|| panic!("network {} has no IPv4 gateway: {gateways:?}", network.name))
            .to_string();
        network
    }

    /// The network's name (unique on this Docker engine).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's IPv4 address on this network (the bridge's address). Containers reach services
    /// the test runs on the host at this address, e.g. `git daemon --listen=<gateway>` or a
    /// `TcpListener` bound to it; the host reaches containers at [`Container::ip`].
    pub fn gateway(&self) -> String {
        self.gateway.clone()
    }

    /// Starts `image` detached as container `name` on this network, with `args` after the image
    /// (the command, or the entrypoint's arguments) and `env` as environment variables. The
    /// container's hostname and network alias are `name`, so the others reach it by that name.
    /// It runs under Docker's init (`--init`: signals are forwarded, zombies reaped) and is
    /// removed with the network.
    pub fn run(&self, name: &str, image: &str, args: &[&str], env: &[(&str, &str)]) -> Container {
        self.run_with(name, image, &[], args, env)
    }

    /// [`Network::run`] with extra `docker run` options before the image (`-v`, `--user`,
    /// `--entrypoint`, ...).
    pub fn run_with(
        &self,
        name: &str,
        image: &str,
        options: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Container {
        let labels = [
            format!("{LABEL}={}", self.prefix),
            format!("{OWNER_LABEL}={}", owner()),
            format!("{NETWORK_LABEL}={}", self.name),
        ];
        let mut cmd: Vec<String> =
            ["run", "-d", "--init", "--name", &format!("{}-{name}", self.name), "--hostname", name]
                .into_iter()
                .chain(["--network", &self.name, "--network-alias", name])
                .map(str::to_string)
                .collect();
        for label in labels {
            cmd.extend(["--label".to_string(), label]);
        }
        for (k, v) in env {
            cmd.extend(["-e".to_string(), format!("{k}={v}")]);
        }
        cmd.extend(options.iter().map(|o| o.to_string()));
        cmd.push(image.to_string());
        cmd.extend(args.iter().map(|a| a.to_string()));
        let id = docker(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        Container { id, name: name.to_string(), network: self.name.clone() }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        remove_network(&self.name);
    }
}

/// A container started by [`Network::run`]; it stays until its network is dropped (dropping the
/// `Container` itself does nothing).
#[derive(Debug, Clone)]
pub struct Container {
    id: String,
    name: String,
    network: String,
}

impl Container {
    /// The short name: the container's hostname and its alias on the network.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's ID (its Docker name is `<network name>-<name>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's IPv4 address on its network, asked from Docker each time (it can change
    /// across restarts and reconnects). Panics when it has none (stopped or disconnected).
    pub fn ip(&self) -> String {
        self.try_ip().unwrap_or_else(|| {
            panic!("container {} has no address on network {} (stopped or disconnected?)", self.name, self.network)
        })
    }

    fn try_ip(&self) -> Option<String> {
        let format =
            format!("{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}", self.network);
        let ip = docker(&["inspect", "-f", &format, &self.id]);
        (!ip.is_empty()).then_some(ip)
    }

    /// Kills the container's processes at once (SIGKILL), like a host losing power.
    pub fn kill(&self) {
        docker(&["kill", &self.id]);
    }

    /// Stops the container: SIGTERM, then SIGKILL after Docker's 10 seconds.
    pub fn stop(&self) {
        docker(&["stop", &self.id]);
    }

    /// Starts the stopped or killed container again, with its command, filesystem and network.
    pub fn start(&self) {
        docker(&["start", &self.id]);
    }

    /// Stops and starts the container.
    pub fn restart(&self) {
        docker(&["restart", &self.id]);
    }

    /// Takes the container off its network (a network partition): it reaches no other container
    /// and the host no longer reaches it; it keeps running.
    pub fn disconnect(&self) {
        docker(&["network", "disconnect", &self.network, &self.id]);
    }

    /// The exit code of the container's command once it stopped; `None` while it runs.
    pub fn exit_code(&self) -> Option<i32> {
        let state = docker(&["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", &self.id]);
        match state.split_once(' ') {
            Some(("false", code)) => code.parse().ok(),
            _ => None,
        }
    }

    /// Puts the container back on its network, reachable again by its name.
    pub fn connect(&self) {
        docker(&["network", "connect", "--alias", &self.name, &self.network, &self.id]);
    }

    /// The container's output so far, stdout and stderr in one text in the order Docker recorded
    /// them (lines the two streams got at the same moment may come in either order).
    pub fn logs(&self) -> String {
        let (mut reader, writer) = std::io::pipe().expect("a pipe for docker logs");
        let mut child = Command::new("docker")
            .args(["logs", &self.id])
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("a pipe for docker logs"))
            .stderr(writer)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `docker logs {}`: {e}", self.id));
        let mut logs = Vec::new();
        // The command holds the pipe's only writers, so this reads until it exits.
        reader.read_to_end(&mut logs).expect("reading docker logs");
        let status = child.wait().expect("waiting for docker logs");
        let logs = String::from_utf8_lossy(&logs).into_owned();
        assert!(status.success(), "`docker logs {}` failed ({status}): {logs}", self.id);
        logs
    }

    /// Runs `args` inside the running container (`docker exec`) and returns its output; its exit
    /// status is for the test to check (it is the command's, or Docker's 125-127 when the command
    /// could not run).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `docker exec {} {}`: {e}", self.id, args.join(" ")))
    }

    /// Waits until `GET path` on the container's `port` (from the host, at [`Container::ip`])
    /// answers with a 2xx status. Panics with the last answer and the container's logs when that
    /// takes longer than `timeout` or the container stops running.
    pub fn wait_http_ok(&self, port: u16, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_ip() {
                Some(ip) => match http_status(&ip, port, path) {
                    Ok(status) if (200..300).contains(&status) => return,
                    Ok(status) => format!("HTTP {status}"),
                    Err(e) => e,
                },
                None => "no address on the network".to_string(),
            };
            let running = docker(&["inspect", "-f", "{{.State.Running}}", &self.id]);
            if running != "true" {
                panic!("container {} stopped while waiting for GET {path} on port {port}:\n{}", self.name, self.logs());
            }
            if Instant::now() >= deadline {
                panic!(
                    "container {}: GET {path} on port {port} not OK within {timeout:?} ({last}); logs:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The status code of `GET path` on `ip:port`, over a raw HTTP/1.1 connection.
fn http_status(ip: &str, port: u16, path: &str) -> Result<u16, String> {
    let ip: IpAddr = ip.parse().map_err(|e| format!("{ip}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(1))
        .map_err(|e| format!("connect {ip}:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send to {ip}:{port}: {e}"))?;
    // Only the status line is read: the answer may be a stream that never ends.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read from {ip}:{port}: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let line = head.lines().next().unwrap_or_default();
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, status, ..] if version.starts_with("HTTP/") => {
            status.parse().map_err(|_| format!("bad status line {line:?}"))
        }
        _ => Err(format!("not an HTTP answer: {line:?}")),
    }
}

/// Runs `docker args` and returns its trimmed stdout; panics with the command and its stderr when
/// it fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`docker {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker args` for cleanup: never panics (it runs in `Drop`, maybe while unwinding), says
/// on stderr what failed, and returns stdout's lines.
fn docker_quiet(args: &[&str]) -> Vec<String> {
    match Command::new("docker").args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect(),
        Ok(out) => {
            eprintln!("cleanup: `docker {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            Vec::new()
        }
        Err(e) => {
            eprintln!("cleanup: cannot run `docker {}`: {e}", args.join(" "));
            Vec::new()
        }
    }
}

/// Removes the network `name` and the containers labelled as being on it (with their anonymous
/// volumes).
fn remove_network(name: &str) {
    let ids = docker_quiet(&["ps", "-aq", "--filter", &format!("label={NETWORK_LABEL}={name}")]);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        docker_quiet(&args);
    }
    docker_quiet(&["network", "rm", name]);
}

/// Removes the containers and networks labelled [`LABEL`] whose owner process is gone.
fn remove_leftovers() {
    // `<ID or name> <owner>` for each object labelled LABEL, kept when the owner is gone.
    let dead = |command: &[&str], key: &str| -> Vec<String> {
        let format = format!("{{{{.{key}}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
        let mut args = command.to_vec();
        let filter = format!("label={LABEL}");
        args.extend(["--filter", &filter, "--format", &format]);
        docker_quiet(&args)
            .iter()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, owner)| !owner_alive(owner))
            .map(|(id, _)| id.to_string())
            .collect()
    };
    let containers = dead(&["ps", "-a"], "ID");
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker_quiet(&args);
    }
    for network in dead(&["network", "ls"], "Name") {
        remove_network(&network);
    }
}

/// This process as an owner label value: `hostname/pid.start-time`.
fn owner() -> String {
    let pid = std::process::id();
    format!("{}/{pid}.{}", hostname(), start_time(pid).unwrap_or_default())
}

/// Whether the process an owner label names still runs. Owners on another host (another PID
/// namespace, such as a CI container sharing the engine) count as alive: they are not ours to
/// judge.
fn owner_alive(owner: &str) -> bool {
    let Some((host, process)) = owner.rsplit_once('/') else { return true };
    if host != hostname() {
        return true;
    }
    let Some((pid, start)) = process.split_once('.') else { return true };
    let Ok(pid) = pid.parse::<u32>() else { return true };
    if start.is_empty() {
        return true; // made where /proc could not tell (not Linux)
    }
    // A missing /proc entry is a dead process; the same pid with another start time is a new one.
    start_time(pid).is_some_and(|now| now == start)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19).map(str::to_string)
}
