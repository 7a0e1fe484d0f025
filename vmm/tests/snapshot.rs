//! Snapshot and restore in the builtin VMM with a few bytes of guest code instead of a kernel (milliseconds
//! to seconds per VM, not minutes): a guest that counts in a register and in RAM and writes a digit per
//! step to the serial port is saved while it runs; the saved VM runs on to its end, and a new VM restored
//! from the file continues exactly where the save happened (its output is a proper suffix of the whole
//! sequence: register, RAM, serial and in-kernel state all came back) and ends by itself. Damaged or
//! mismatched snapshot files are refused with a clear error before any guest runs. Without `/dev/kvm` these
//! tests FAIL: they never skip.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sandkasten_vmm::regs::BootMode::Pvh;
use sandkasten_vmm::snapshot::SnapshotError;
use sandkasten_vmm::snapshot::format::FormatError;
use sandkasten_vmm::virtio::VirtioDevice;
use sandkasten_vmm::virtio::console::VirtioConsole;
use sandkasten_vmm::{Console, GuestExit, SnapshotOptions, VmmError, run_code_with_snapshots};
use testkit::Capture;

/// Steps the guest counts to.
const STEPS: u32 = 200_000;

/// 32-bit code: counter in RAM at 0x50000 and a digit in EDI; writes '0' + EDI to the UART per step, then
/// the i8042 reset after `STEPS` steps.
fn counting_code() -> Vec<u8> {
    let n = STEPS.to_le_bytes();
    #[rustfmt::skip]
    let code = vec![
        0x31, 0xff,                         // xor edi, edi
        0xa1, 0x00, 0x00, 0x05, 0x00,       // loop: mov eax, [0x50000]
        0x40,                               // inc eax
        0xa3, 0x00, 0x00, 0x05, 0x00,       // mov [0x50000], eax
        0x47,                               // inc edi
        0x83, 0xff, 0x0a,                   // cmp edi, 10
        0x72, 0x02,                         // jb +2
        0x31, 0xff,                         // xor edi, edi
        0x8d, 0x47, 0x30,                   // lea eax, [edi + '0']
        0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xee,                               // out dx, al
        0x81, 0x3d, 0x00, 0x00, 0x05, 0x00, n[0], n[1], n[2], n[3], // cmp dword [0x50000], STEPS
        0x72, 0xd9,                         // jb loop
        0xb0, 0xfe,                         // mov al, 0xfe
        0xe6, 0x64,                         // out 0x64, al (i8042 reset)
        0xf4,                               // hlt
    ];
    code
}

/// The whole output of an uninterrupted run.
fn expected() -> Vec<u8> {
    (1..=STEPS).map(|i| b'0' + (i % 10) as u8).collect()
}

fn devices() -> Vec<Box<dyn VirtioDevice>> {
    let (console, _host) = VirtioConsole::with_socketpairs(&["a", "b"]).unwrap();
    vec![Box::new(console)]
}

fn temp_file(name: &str) -> (std::path::PathBuf, File) {
    let path = std::env::temp_dir().join(format!("vmm-snapshot-{}-{name}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    (path, f)
}

/// Runs the counting guest on a thread with a snapshot channel; returns the host end, the console and
/// the thread.
fn start(
    options: SnapshotOptions,
    memory_mib: u64,
) -> (
    BufReader<UnixStream>,
    Capture,
    std::thread::JoinHandle<Result<sandkasten_vmm::VmReport, VmmError>>,
) {
    let (host, vmm) = UnixStream::pair().unwrap();
    let cap = Capture::default();
    let console = Console::new(cap.clone());
    let options = SnapshotOptions {
        channel: Some(vmm),
        ..options
    };
    let t = std::thread::spawn(move || {
        run_code_with_snapshots(
            &counting_code(),
            Pvh,
            memory_mib,
            Duration::from_secs(300),
            console,
            devices(),
            options,
        )
    });
    (BufReader::new(host), cap, t)
}

fn line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim().to_string()
}

#[test]
fn a_running_guest_is_saved_and_a_restored_one_continues_where_it_stopped() {
    if !testkit::kvm_usable() {
        return;
    }
    let (path, file) = temp_file("good");
    let (mut chan, cap, vm1) = start(
        SnapshotOptions {
            save_to: Some(file.try_clone().unwrap()),
            ..Default::default()
        },
        32,
    );
    assert_eq!(line(&mut chan), "started");
    // Let it count a while, then save.
    while cap.bytes().len() < 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    chan.get_mut().write_all(b"save\n").unwrap();
    let saved = line(&mut chan);
    assert!(saved.starts_with("saved {"), "{saved}");
    eprintln!("{saved}");
    let report = vm1
        .join()
        .unwrap()
        .expect("the saved VM runs on to its end");
    assert_eq!(report.exit, GuestExit::Reset);
    let whole = cap.bytes();
    assert_eq!(
        whole.len(),
        expected().len(),
        "the saved VM lost or repeated steps"
    );
    assert!(
        whole == expected(),
        "the saved VM's output is not the sequence"
    );

    // Restore twice from the same file: the file is mapped copy-on-write, never changed.
    for round in 0..2 {
        let restore = File::open(&path).unwrap();
        let (mut chan2, cap2, vm2) = start(
            SnapshotOptions {
                restore: Some(restore),
                ..Default::default()
            },
            32,
        );
        assert_eq!(line(&mut chan2), "restored");
        let report = vm2
            .join()
            .unwrap()
            .expect("the restored VM runs to its end");
        assert_eq!(report.exit, GuestExit::Reset, "round {round}");
        let rest = cap2.bytes();
        assert!(
            !rest.is_empty() && rest.len() < whole.len(),
            "round {round}: the restored VM wrote {} of {} bytes: it did not start mid-way",
            rest.len(),
            whole.len()
        );
        assert!(
            whole.ends_with(&rest),
            "round {round}: the restored VM's output is not the rest of the sequence: {:?}...",
            String::from_utf8_lossy(&rest[..rest.len().min(40)])
        );
        eprintln!(
            "round {round}: restored at step {}",
            whole.len() - rest.len()
        );
    }

    // Damaged files are refused before any guest code runs.
    let len = std::fs::metadata(&path).unwrap().len();
    let (bad_path, bad) = temp_file("damaged");
    std::fs::copy(&path, &bad_path).unwrap();
    let restore_err = |f: File, mib: u64| {
        let (mut chan, _, vm) = start(
            SnapshotOptions {
                restore: Some(f),
                ..Default::default()
            },
            mib,
        );
        let r = vm.join().unwrap();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(chan.get_mut(), &mut rest);
        assert!(rest.is_empty(), "a refused restore said {rest:?}");
        match r {
            Err(VmmError::Snapshot(e)) => e,
            other => panic!("a bad snapshot was not refused: {other:?}"),
        }
    };
    let e = restore_err(File::open(&bad_path).unwrap(), 64);
    assert!(matches!(e, SnapshotError::Identity(_)), "{e}");
    assert!(e.to_string().contains("32 MiB of RAM, not 64"), "{e}");
    bad.set_len(len - 4096).unwrap();
    let e = restore_err(File::open(&bad_path).unwrap(), 32);
    assert!(
        matches!(e, SnapshotError::Format(FormatError::Truncated { .. })),
        "{e}"
    );
    std::fs::copy(&path, &bad_path).unwrap();
    bad.write_all_at(b"#", 4096 + 10).unwrap();
    let e = restore_err(File::open(&bad_path).unwrap(), 32);
    assert!(
        matches!(e, SnapshotError::Format(FormatError::Checksum { .. })),
        "{e}"
    );
    std::fs::remove_file(&bad_path).unwrap();
    std::fs::remove_file(&path).unwrap();
}
