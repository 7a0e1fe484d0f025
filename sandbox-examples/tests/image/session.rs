//! `sandbox create --image`: a session on an image, whose program is the image's command unless one is given.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{TempDir, text};

use super::build::{self, Compression};
use super::{Store, bin, ok};

/// A state directory whose sessions are removed (killed first) at the end, even when an assertion failed.
struct State {
    dir: PathBuf,
}

impl State {
    /// `sandbox SUB --state-dir DIR ARGS...`.
    fn run(&self, sub: &str, args: &[&str]) -> Output {
        Command::new(bin())
            .arg(sub)
            .arg("--state-dir")
            .arg(&self.dir)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .expect("the CLI runs")
    }

    /// Session `id`'s row of `ps -a --json`.
    fn row(&self, id: &str) -> Value {
        let out = ok(&self.run("ps", &["-a", "--json"]), "ps");
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        rows.into_iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed: {out}"))
    }

    /// Waits up to 10 s for session `id` to end; its row.
    fn ended(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let row = self.row(id);
            if !matches!(row["state"].as_str(), Some("created" | "running")) {
                return row;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{row}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if id != "names" {
                let _ = self.run("rm", &["--force", &id]);
            }
        }
    }
}

fn create(state: &State, store: &Path, args: &[&str]) -> String {
    let mut all = vec!["--store", store.to_str().unwrap(), "--image", "demo:1"];
    all.extend_from_slice(args);
    ok(&state.run("create", &all), "create --image")
        .trim()
        .to_string()
}

#[test]
fn a_session_on_an_image_runs_the_images_command() {
    let work = TempDir::new("image-session");
    let w = build::demo(Compression::Gzip).write_oci(&work.join("layout"));
    let store = Store::new("image-session-store");
    store.import_ok(&work.join("layout"), &["--name", "demo:1"], "demo:1", &w.id);
    let state = State {
        dir: work.join("state"),
    };

    // No PROGRAM: the image's Entrypoint and Cmd, waiting for `start`.
    let id = create(&state, store.path(), &[]);
    let row = state.row(&id);
    assert_eq!(row["state"], "created", "{row}");
    assert_eq!(
        row["command"],
        serde_json::json!(["/bin/sh", "-c", "echo $GREETING"]),
        "{row}"
    );
    // A command runs as the image says: its user, directory and environment.
    let out = state.run(
        "exec",
        &[
            &id,
            "--",
            "/bin/sh",
            "-c",
            "busybox id -u; pwd; echo $GREETING",
        ],
    );
    assert_eq!(ok(&out, "exec"), "1000\n/app\nhello from the image\n");
    ok(&state.run("start", &[&id]), "start");
    let row = state.ended(&id);
    assert_eq!(row["state"], "exited", "{row}");
    assert_eq!(row["exit_code"], 0, "{row}");
    assert_eq!(
        ok(&state.run("logs", &[&id]), "logs"),
        "hello from the image\n"
    );
    ok(&state.run("rm", &[&id]), "rm");

    // PROGRAM replaces Cmd after the Entrypoint.
    let id = create(&state, store.path(), &["--", "echo given; exit 3"]);
    assert_eq!(
        state.row(&id)["command"],
        serde_json::json!(["/bin/sh", "-c", "echo given; exit 3"])
    );
    ok(&state.run("start", &[&id]), "start");
    let row = state.ended(&id);
    assert_eq!(row["exit_code"], 3, "{row}");
    let out = state.run("logs", &[&id]);
    assert_eq!(ok(&out, "logs"), "given\n", "{}", text(&out.stderr));
    ok(&state.run("rm", &[&id]), "rm");
}
