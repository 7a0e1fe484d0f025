//! `sandbox-service`: an example service on the async API. It reads jobs, one JSON object per line, on
//! standard input, runs each in a sandbox with at most `--jobs` running at once, and writes one verdict per
//! job, as a JSON line on standard output, in the order the runs end.
//!
//! ```text
//! sandbox-service [--jobs N] [--backend namespace|vm] [--vm-engine auto|qemu|builtin] [--vm-memory MIB]
//!                 [--prewarm N] [--output-limit SIZE] [--kill-over-limit] [--timeout SECONDS] < jobs > verdicts
//! ```
//!
//! A job: `{"id": "a1", "argv": ["/bin/sh", "-c", "echo hi"], "stdin": "text", "env": {"K": "V"},
//! "timeout_ms": 2000}` (only `id` and `argv` are required). A verdict: `{"id": "a1", "verdict": {...},
//! "stdout": "...", "stderr": "..."}`, where `verdict` is the library's verdict (`docs/verdict.md`: status,
//! usage, what was enforced, `capture` with the bytes written and whether a stream was cut at the output
//! limit) and the streams hold at most `--output-limit` bytes each (as text, invalid UTF-8 replaced). A
//! line that is not a job gets `{"id": null, "error": "..."}` and the service goes on.
//!
//! With `--backend vm` the runs share one pool of warm VMs (`--jobs` VMs at most, each run in fresh
//! namespaces and cgroup inside its VM). At the end a summary goes to standard error as one JSON line:
//! jobs, the most that ran at once, and the pool's counters.
//!
//! One tokio runtime drives every run: no thread waits per sandbox (their ends and pipes are registered
//! with the reactor); starting a sandbox is done on tokio's blocking pool.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sandkasten::{OutputLimit, Policy, Sandbox, Stdio};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Runs jobs (JSON lines on stdin) in sandboxes, at most --jobs at once; one verdict per line on stdout",
    after_help = "Example:\n  printf '%s\\n' '{\"id\":\"1\",\"argv\":[\"/bin/echo\",\"hi\"]}' | sandbox-service --jobs 16"
)]
struct Args {
    /// How many sandboxes run at once (with --backend vm: also the most VMs).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    jobs: u32,
    /// Where the runs go: fresh namespaces on this host, or warm VMs of one pool.
    #[arg(long, value_enum, default_value_t = BackendArg::Namespace)]
    backend: BackendArg,
    /// The VMM of the pool (--backend vm).
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    vm_engine: EngineArg,
    /// Guest RAM of each pool VM, in MiB.
    #[arg(long, default_value_t = 256)]
    vm_memory: u64,
    /// VMs booted before the first job is read (--backend vm).
    #[arg(long, default_value_t = 0)]
    prewarm: usize,
    /// The most bytes kept of each job's stdout and of its stderr (e.g. 64KiB, 1MB).
    #[arg(long, default_value = "64KiB", value_parser = size)]
    output_limit: u64,
    /// Kill a job that writes past --output-limit (else the rest is read and dropped).
    #[arg(long)]
    kill_over_limit: bool,
    /// Wall-clock limit of a job without its own `timeout_ms`, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Namespace,
    Vm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    Auto,
    Qemu,
    Builtin,
}

fn size(s: &str) -> Result<u64, String> {
    sandkasten::policy::parse_size(s).map_err(|e| e.to_string())
}

/// One line of input.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Job {
    id: String,
    argv: Vec<String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// What every run shares.
struct Service {
    limit: OutputLimit,
    pool: Option<sandkasten::VmPool>,
    default_timeout: Duration,
    running: AtomicUsize,
    most: AtomicUsize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("sandbox-service: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sandbox-service: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox-service: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let limit = if args.kill_over_limit {
        OutputLimit::kill_after(args.output_limit)
    } else {
        OutputLimit::truncate(args.output_limit)
    };
    let pool = match args.backend {
        BackendArg::Namespace => None,
        BackendArg::Vm => {
            let engine = match args.vm_engine {
                EngineArg::Auto => sandkasten::VmEngine::Auto,
                EngineArg::Qemu => sandkasten::VmEngine::Qemu,
                EngineArg::Builtin => sandkasten::VmEngine::Builtin,
            };
            let jobs = args.jobs as usize;
            let options = sandkasten::PoolOptions {
                engine,
                memory_mib: args.vm_memory,
                max_vms: jobs,
                max_idle: jobs,
                ..Default::default()
            };
            let prewarm = args.prewarm.min(jobs);
            // Creating the pool and booting VMs ahead are blocking work.
            let pool = tokio::task::spawn_blocking(move || {
                let pool = sandkasten::VmPool::new(options)?;
                pool.prewarm(prewarm)?;
                Ok::<_, sandkasten::Error>(pool)
            })
            .await
            .map_err(|e| format!("the pool's start: {e}"))?
            .map_err(|e| format!("cannot start the VM pool: {e}"))?;
            Some(pool)
        }
    };
    let service = Arc::new(Service {
        limit,
        pool,
        default_timeout: Duration::from_secs_f64(args.timeout),
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });

    // One writer: verdict lines never interleave.
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(v) = rx.recv().await {
            let mut line = v.to_string();
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = out.flush().await;
    });

    let permits = Arc::new(Semaphore::new(args.jobs as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut jobs = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("reading jobs from stdin: {e}"))?
    {
        if line.trim().is_empty() {
            continue;
        }
        let job: Job = match serde_json::from_str(&line) {
            Ok(j) => j,
            Err(e) => {
                let _ = tx
                    .send(json!({"id": null, "error": format!("not a job: {e}")}))
                    .await;
                continue;
            }
        };
        jobs += 1;
        // Waits here while --jobs runs are in flight: reading stops too (backpressure).
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let service = Arc::clone(&service);
        let tx = tx.clone();
        tasks.spawn(async move {
            let verdict = run(&service, job).await;
            drop(permit);
            let _ = tx.send(verdict).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("a job's task failed: {e}"))?;
    }
    drop(tx);
    writer
        .await
        .map_err(|e| format!("the writer failed: {e}"))?;
    let mut summary = json!({
        "jobs": jobs,
        "most_at_once": service.most.load(Ordering::Relaxed),
    });
    if let Some(pool) = &service.pool {
        let st = pool.stats();
        summary["pool"] = json!({"boots": st.boots, "runs": st.runs, "warm_runs": st.warm_runs});
    }
    eprintln!("{summary}");
    Ok(())
}

/// Runs one job to its verdict line.
async fn run(service: &Service, job: Job) -> Value {
    let Some((program, rest)) = job.argv.split_first() else {
        return json!({"id": job.id, "error": "argv is empty"});
    };
    let timeout = job
        .timeout_ms
        .map_or(service.default_timeout, Duration::from_millis);
    let mut cmd = Sandbox::new(program);
    cmd.output_limits(service.limit, service.limit);
    if let Some(pool) = &service.pool {
        cmd.vm_pool(pool);
    }
    cmd.args(rest)
        .envs(&job.env)
        .policy(Policy::default().timeout(timeout))
        .stdin(if job.stdin.is_some() {
            Stdio::Piped
        } else {
            Stdio::Null
        })
        .stdout(Stdio::Piped)
        .stderr(Stdio::Piped);

    let now = service.running.fetch_add(1, Ordering::Relaxed) + 1;
    service.most.fetch_max(now, Ordering::Relaxed);
    let result = async {
        let mut child = cmd.spawn_async().await?;
        let input = child.stdin.take();
        let feed = async {
            if let (Some(mut w), Some(text)) = (input, &job.stdin) {
                // A program that does not read its input closes the pipe: not an error of the job.
                let _ = w.write_all(text.as_bytes()).await;
            }
        };
        let (_, outcome) = tokio::join!(feed, child.wait_with_output());
        outcome
    }
    .await;
    service.running.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(o) => json!({
            "id": job.id,
            "verdict": o.report_json(),
            "stdout": String::from_utf8_lossy(&o.stdout),
            "stderr": String::from_utf8_lossy(&o.stderr),
        }),
        Err(e) => json!({"id": job.id, "error": e.to_string()}),
    }
}
