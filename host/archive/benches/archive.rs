//! Throughput of select + pack and verify + unpack against `tar | zstd -3`, and of `hash_files`.
//!
//! Run with `cargo bench -p chengis-archive --bench archive`. `CHENGIS_BENCH_MB` sets the size
//! of the generated input (default 500); `CHENGIS_BENCH_DIR` keeps the generated input between
//! runs (otherwise a temporary directory is used and removed). Every figure is the best of three
//! runs after one warm-up run, so both sides read from the page cache; our runs and the command
//! line's alternate, each after a `sync`, and write new files (outputs are removed at the end).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chengis_archive::{PackLimits, Persisted, hash_files, pack, persist, select, unpack};

const MB: u64 = 1_000_000;
const RUNS: usize = 3;
const HASH_FILES: usize = 50_000;

/// xorshift64: fast, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        let end = out.len() + len;
        while out.len() < end {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(end);
    }
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "pub",
    "struct",
    "impl",
    "self",
    "return",
    "match",
    "if",
    "else",
    "for",
    "in",
    "while",
    "loop",
    "const",
    "static",
    "use",
    "mod",
    "crate",
    "super",
    "where",
    "async",
    "await",
    "move",
    "ref",
    "type",
    "trait",
    "enum",
    "Some",
    "None",
    "Ok",
    "Err",
    "Result",
    "Option",
    "String",
    "Vec",
    "usize",
    "u64",
    "i32",
    "bool",
    "true",
    "false",
    "value",
    "index",
    "buffer",
    "config",
    "request",
    "response",
    "handler",
    "error",
    "context",
    "state",
    "builder",
    "entry",
    "path",
    "file",
    "reader",
    "writer",
    "stream",
    "token",
    "parser",
    "node",
    "tree",
    "visit",
    "module",
    "export",
    "import",
    "require",
    "function",
    "const",
    "var",
    "this",
    "new",
    "class",
    "extends",
    "undefined",
    "null",
    "object",
    "array",
    "length",
    "push",
    "map",
    "filter",
    "reduce",
    "then",
    "catch",
    "promise",
    "=",
    "==",
    "=>",
    "->",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ";",
    ",",
    ".",
    "::",
    "&",
    "*",
    "+",
    "-",
    "<",
    ">",
    "0",
    "1",
];

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let indent = rng.below(4) as usize * 4;
        out.resize(out.len() + indent, b' ');
        for _ in 0..3 + rng.below(9) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// Object-file-like bytes: a mix of random, zeroed and repetitive 4 KiB blocks.
fn object(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        match rng.below(3) {
            0 => rng.fill(&mut out, 4096),
            1 => out.resize(out.len() + 4096, 0),
            _ => {
                let pattern = rng.next().to_le_bytes();
                for i in 0..512 {
                    let mut chunk = pattern;
                    chunk[i % 8] = i as u8;
                    out.extend_from_slice(&chunk);
                }
            }
        }
    }
    out.truncate(len);
    out
}

fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, contents)
}

/// A `target/` + `node_modules/` mix: 40% text in many small files, 60% binary in fewer, bigger
/// ones (half object-like, half incompressible).
fn generate_mixed(dir: &Path, mb: u64) -> io::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let text_budget = mb * MB * 4 / 10;
    let text_files = (20_000 * mb / 500).max(100);
    let average = text_budget / text_files;
    let kinds = ["js", "ts", "json", "md", "rs"];
    let subdirs = ["lib", "src", "dist/esm", "dist/cjs", "test"];
    for i in 0..text_files {
        let len = (average / 5 + rng.below(average * 8 / 5)) as usize;
        let path = dir.join(format!(
            "node_modules/pkg-{:04}/{}/file-{i}.{}",
            i / 40,
            subdirs[(i % 5) as usize],
            kinds[rng.below(5) as usize]
        ));
        write(&path, &text(&mut rng, len))?;
    }
    let binary_budget = mb * MB * 6 / 10;
    let object_size = 256 * 1024;
    let objects = (binary_budget / 2 / object_size).max(1);
    for i in 0..objects {
        let len = (object_size / 2 + rng.below(object_size)) as usize;
        let path = dir.join(format!("target/release/deps/crate-{:03}/lib{i}.rlib", i / 25));
        write(&path, &object(&mut rng, len))?;
    }
    let large_size = 25 * MB;
    let larges = (binary_budget / 2 / large_size).max(1);
    for i in 0..larges {
        let len = (binary_budget / 2 / larges) as usize;
        let mut data = Vec::with_capacity(len + 8);
        rng.fill(&mut data, len);
        write(&dir.join(format!("target/release/app-{i}")), &data)?;
    }
    fs::create_dir_all(dir.join("target/release/incremental/empty"))?;
    Ok(())
}

fn generate_small(dir: &Path) -> io::Result<()> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..HASH_FILES {
        let len = 100 + rng.below(1900) as usize;
        write(&dir.join(format!("d{:03}/f{i}.txt", i / 200)), &text(&mut rng, len))?;
    }
    Ok(())
}

/// Generates `dir` with `generate` unless a previous run completed it.
fn ensure(dir: &Path, generate: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let marker = dir.with_extension("complete");
    if marker.exists() {
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    generate(dir)?;
    fs::write(marker, b"")
}

/// The times of `ours` and `cli` over [`RUNS`] runs each, after one warm-up run each; the runs
/// alternate so that both sides see the same background load. Each run gets its number.
fn duel(mut ours: impl FnMut(usize) -> Duration, mut cli: impl FnMut(usize) -> Duration) -> (Runs, Runs) {
    let (mut ours_runs, mut cli_runs) = (Runs::default(), Runs::default());
    for run in 0..=RUNS {
        settle();
        let time = ours(run);
        if run > 0 {
            ours_runs.0.push(time);
        }
        settle();
        let time = cli(run);
        if run > 0 {
            cli_runs.0.push(time);
        }
    }
    (ours_runs, cli_runs)
}

/// The times of the timed runs of one side.
#[derive(Default)]
struct Runs(Vec<Duration>);

impl Runs {
    fn best(&self) -> Duration {
        self.0.iter().copied().min().unwrap_or_default()
    }

    fn list(&self) -> String {
        self.0.iter().map(|t| format!("{:.2}", t.as_secs_f64())).collect::<Vec<_>>().join(" ")
    }
}

fn best(mut run: impl FnMut() -> Duration) -> Duration {
    run();
    (0..RUNS).map(|_| run()).min().unwrap_or_default()
}

/// Flushes dirty pages and pending discards of earlier runs, so that a timed run does not pay
/// for the writes or deletions of the one before it (not timed).
fn settle() {
    shell("sync");
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn shell(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    assert!(status.success(), "`{script}` failed with {status}");
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn fresh(dir: &Path) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("cannot remove {}: {e}", dir.display()));
    }
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / MB as f64 / time.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; arguments are ignored.
    let mb: u64 = std::env::var("CHENGIS_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let kept = std::env::var_os("CHENGIS_BENCH_DIR").map(PathBuf::from);
    let temp = match kept {
        Some(_) => None,
        None => Some(tempfile::tempdir().expect("create a temporary directory")),
    };
    let base = kept.clone().unwrap_or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default());
    let data = base.join(format!("mixed-{mb}mb"));
    let small = base.join("small-50k");
    let work = base.join("work");
    ensure(&data, |dir| generate_mixed(dir, mb)).expect("generate the mixed directory");
    ensure(&small, generate_small).expect("generate the small-file directory");
    fresh(&work);
    fs::create_dir_all(&work).expect("create the work directory");

    let patterns = vec![".".to_string()];
    let selection = select(&data, &patterns).expect("select");
    let input = selection.total_bytes;
    let files = selection.file_count();
    let dirs = selection.entries.len() - files;

    // Pack. Every run writes new files and nothing is deleted until the end: on this kind of
    // filesystem, deleting (with online discard) makes the next run's allocations erratic.
    let mut packed_meta = (String::new(), 0u64);
    let cli_archive = |run: usize| work.join(format!("cli-{run}.tar.zst"));
    let (ours_pack, cli_pack) = duel(
        |run| {
            let start = Instant::now();
            let selection = select(&data, &patterns).expect("select");
            let packed = pack(&data, &selection, &work, PackLimits::default()).expect("pack");
            let time = start.elapsed();
            packed_meta = (packed.sha256.clone(), packed.size);
            packed.file.persist(work.join(format!("ours-{run}.tar.zst"))).expect("keep the archive");
            time
        },
        |run| {
            let script = format!("tar -cf - -C {} . | zstd -3 -q -o {}", quote(&data), quote(&cli_archive(run)));
            timed(|| shell(&script))
        },
    );
    let ours_archive = work.join("ours-0.tar.zst");
    let cli_size = fs::metadata(cli_archive(0)).expect("stat the CLI archive").len();

    // Unpack, each run into a new directory.
    let (ours_unpack, cli_unpack) = duel(
        |run| {
            let dest = work.join(format!("dest-ours-{run}"));
            timed(|| {
                unpack(&ours_archive, &packed_meta.0, &dest).expect("unpack");
            })
        },
        |run| {
            let dest = quote(&work.join(format!("dest-cli-{run}")));
            let script = format!("mkdir -p {dest} && zstd -dc {} | tar -xf - -C {dest}", quote(&cli_archive(0)));
            timed(|| shell(&script))
        },
    );

    // Persist (fsync + rename), for reference.
    let persist_time = {
        let selection = select(&data, &patterns).expect("select");
        let packed = pack(&data, &selection, &work, PackLimits::default()).expect("pack");
        let target = work.join("persisted.tar.zst");
        let time = timed(|| assert_eq!(persist(packed, &target).expect("persist"), Persisted::Written));
        fs::remove_file(target).expect("remove");
        time
    };

    // hashFiles.
    let hash_patterns = vec!["**/*".to_string()];
    let hash_time = best(|| timed(|| assert_eq!(hash_files(&small, &hash_patterns).expect("hash").len(), 64)));

    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "chengis-archive bench: {:.0} MB in {files} files + {dirs} dirs/links, nproc {nproc}, best of {RUNS} after a warm-up",
        input as f64 / MB as f64
    );
    println!("{:<28} {:>20} {:>20} {:>10}", "", "ours", "tar | zstd -3", "ours/CLI");
    let row = |name: &str, ours_runs: &Runs, cli_runs: &Runs| {
        let (ours, cli) = (ours_runs.best(), cli_runs.best());
        println!(
            "{:<28} {:>8.3} s {:>6.0} MB/s {:>8.3} s {:>6.0} MB/s {:>9.2}x",
            name,
            ours.as_secs_f64(),
            mb_per_s(input, ours),
            cli.as_secs_f64(),
            mb_per_s(input, cli),
            ours.as_secs_f64() / cli.as_secs_f64()
        );
        println!("{:<28} ours {} s | CLI {} s", "  all runs", ours_runs.list(), cli_runs.list());
    };
    row("pack (select+pack)", &ours_pack, &cli_pack);
    row("unpack (verify+extract)", &ours_unpack, &cli_unpack);
    println!(
        "{:<28} {:>17.1} MB {:>17.1} MB {:>9.2}x",
        "compressed size",
        packed_meta.1 as f64 / MB as f64,
        cli_size as f64 / MB as f64,
        packed_meta.1 as f64 / cli_size as f64
    );
    println!("{:<28} {:>8.3} s (fsync + rename, one run)", "persist", persist_time.as_secs_f64());
    println!(
        "{:<28} {:>8.1} ms {:>9.0} files/s",
        format!("hash_files **/* ({HASH_FILES})"),
        hash_time.as_secs_f64() * 1000.0,
        HASH_FILES as f64 / hash_time.as_secs_f64()
    );
    println!("reproduce: CHENGIS_BENCH_MB={mb} cargo bench -p chengis-archive --bench archive");

    fresh(&work);
    drop(temp);
}
