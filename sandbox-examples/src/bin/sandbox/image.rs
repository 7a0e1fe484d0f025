//! `sandbox image`: import, list, inspect, remove and prune container images in a store.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sandkasten::image::{ImageInfo, ImageStore, ImportOptions, Progress, Reference};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The image store (default: /var/lib/sandbox/images for root, else ~/.local/share/sandbox/images).
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (a directory, or a tar of one) or a `docker save` archive.
    Import {
        /// The layout directory or the archive.
        path: PathBuf,
        /// The name to give it, NAME[:TAG] (default: the name the input gives it). When the input holds
        /// several images, picks the one with this name or tag.
        #[arg(long, value_name = "NAME[:TAG]")]
        name: Option<String>,
        /// Most bytes of one layer once uncompressed (decompression bombs), e.g. 64M; K/M/G/T are powers of
        /// 1024.
        #[arg(long = "max-layer-size", value_name = "SIZE", default_value = "32G")]
        max_layer_size: String,
    },
    /// List the images.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an image's metadata as JSON: layers, config (Env, Entrypoint, Cmd, WorkingDir, User).
    Inspect {
        /// NAME[:TAG], or an id (sha256:... or 12 or more of its hex digits).
        name: String,
    },
    /// Remove an image's name (its layers stay until `prune`).
    Rm {
        /// NAME[:TAG] or an id.
        name: String,
    },
    /// Remove the layers no image refers to, and leftovers of interrupted imports.
    Prune,
}

pub fn main(args: ImageArgs) -> Result<ExitCode, String> {
    let path = args.store.unwrap_or_else(ImageStore::default_path);
    let store = ImageStore::open(&path).map_err(|e| e.to_string())?;
    match args.command {
        ImageCommand::Import {
            path,
            name,
            max_layer_size,
        } => {
            let mut opts = ImportOptions::default();
            opts.name = name
                .as_deref()
                .map(Reference::parse)
                .transpose()
                .map_err(|e| e.to_string())?;
            opts.max_layer_bytes = super::parse_size(&max_layer_size)?;
            let tty = std::io::stderr().is_terminal();
            let mut show = |p: Progress| show_progress(p);
            if tty {
                opts.progress = Some(&mut show);
            }
            let result = store.import(&path, opts);
            if tty {
                eprintln!();
            }
            let info = result.map_err(|e| e.to_string())?;
            println!("{}:{} {}", info.name, info.tag, info.id);
        }
        ImageCommand::Ls { json } => {
            let images = store.list().map_err(|e| e.to_string())?;
            if json {
                let list: Vec<_> = images.iter().map(summary).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("serializes")
                );
            } else {
                println!(
                    "{:<40} {:<16} {:<19} {:>6} {:>10}",
                    "NAME", "TAG", "ID", "LAYERS", "SIZE"
                );
                for i in &images {
                    let id = i.id.trim_start_matches("sha256:");
                    println!(
                        "{:<40} {:<16} {:<19} {:>6} {:>10}",
                        i.name,
                        i.tag,
                        &id[..12.min(id.len())],
                        i.layers.len(),
                        human(i.size())
                    );
                }
            }
        }
        ImageCommand::Inspect { name } => {
            let info = store.get(&name).map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&info).expect("serializes")
            );
        }
        ImageCommand::Rm { name } => {
            let info = store.remove(&name).map_err(|e| e.to_string())?;
            println!("removed {}:{} {}", info.name, info.tag, info.id);
        }
        ImageCommand::Prune => {
            let pruned = store.prune().map_err(|e| e.to_string())?;
            println!(
                "removed {} layers ({}), {} leftovers of interrupted imports",
                pruned.layers,
                human(pruned.bytes),
                pruned.leftovers
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(i: &ImageInfo) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "tag": i.tag,
        "id": i.id,
        "manifest": i.manifest,
        "layers": i.layers.len(),
        "size": i.size(),
    })
}

fn show_progress(p: Progress) {
    let mut err = std::io::stderr().lock();
    match p {
        Progress::Layer {
            index,
            count,
            diff_id,
            shared,
        } => {
            let short = diff_id.trim_start_matches("sha256:");
            let state = if shared {
                "already in the store"
            } else {
                "unpacking"
            };
            let _ = write!(
                err,
                "\n\rlayer {index}/{count} {}: {state}",
                &short[..12.min(short.len())]
            );
        }
        Progress::Bytes { done, total } => {
            let total = total
                .map(|t| format!(" of {}", human(t)))
                .unwrap_or_default();
            let _ = write!(err, "\r\x1b[K  read {}{total}", human(done));
        }
        _ => {}
    }
    let _ = err.flush();
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
