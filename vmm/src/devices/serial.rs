//! The 8250 UART at 0x3f8 (COM1, IRQ 4) on `vm-superio`: the guest kernel's console, i.e. the kernel log
//! and the messages of the guest's init (a program's output belongs on virtio-console ports instead).
//! Guest input is not wired: the serial console is output only.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, BusEvent};
use crate::snapshot::state::SerialState;

/// COM1.
pub const SERIAL_BASE: u64 = 0x3f8;
/// Eight registers.
pub const SERIAL_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const SERIAL_IRQ: u32 = 4;

/// Raises the UART's interrupt line: an eventfd that KVM injects as an IRQ (irqfd), or, in tests, any
/// eventfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the serial console goes, with a cap on how much of it is kept: a guest that floods its console
/// costs the host at most `limit` bytes (then one truncation notice), never unbounded memory or disk.
pub struct Console {
    out: Box<dyn Write + Send>,
    limit: u64,
    written: u64,
}

impl Console {
    /// The default cap: 16 MiB.
    pub const DEFAULT_LIMIT: u64 = 16 << 20;

    /// A console writing to `out`, capped at [`Console::DEFAULT_LIMIT`].
    pub fn new(out: impl Write + Send + 'static) -> Console {
        Console {
            out: Box::new(out),
            limit: Self::DEFAULT_LIMIT,
            written: 0,
        }
    }

    /// Keeps at most `bytes` bytes of console output.
    pub fn limit(mut self, bytes: u64) -> Console {
        self.limit = bytes;
        self
    }
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("limit", &self.limit)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.written);
        if room == 0 {
            return Ok(b.len());
        }
        let keep = &b[..b.len().min(room as usize)];
        self.out.write_all(keep)?;
        self.written += keep.len() as u64;
        if self.written >= self.limit {
            let notice = format!("\n[console truncated at {} bytes]\n", self.limit);
            let _ = self.out.write_all(notice.as_bytes());
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The UART on the PIO bus, writing what the guest sends to its [`Console`].
pub struct SerialPort {
    inner: Serial<IrqLine, NoEvents, Console>,
}

impl SerialPort {
    /// A UART that raises `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: Console) -> SerialPort {
        SerialPort {
            inner: Serial::new(IrqLine(irq), out),
        }
    }
}

impl SerialPort {
    /// The UART's registers and unread input, for a snapshot.
    pub fn save(&self) -> SerialState {
        let s = self.inner.state();
        SerialState {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in a saved state that raises `irq` and writes to `out`.
    pub fn restore(irq: EventFd, out: Console, saved: &SerialState) -> Result<SerialPort, String> {
        let [ier, iir, lcr, lsr, mcr, msr, scr] = saved.registers;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: saved.divisor[0],
            baud_divisor_high: saved.divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: saved.in_buffer.clone(),
        };
        let inner = Serial::from_state(&state, IrqLine(irq), NoEvents, out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(SerialPort { inner })
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let ([first, ..], Ok(o)) = (&mut *data, u8::try_from(offset)) {
            *first = self.inner.read(o);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusEvent {
        if let ([value], Ok(o)) = (data, u8::try_from(offset)) {
            // A failing writer (e.g. a closed log) must not stop the guest: the byte is dropped.
            let _ = self.inner.write(o, *value);
        }
        BusEvent::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_writer_and_raise_the_irq() {
        let cap = Capture::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialPort::new(irq.try_clone().unwrap(), Console::new(cap.clone()));
        // Enable the "transmitter holding register empty" interrupt (IER bit 1), then send.
        s.write(1, &[0x02]);
        for b in b"hi\n" {
            assert_eq!(s.write(0, &[*b]), BusEvent::Continue);
        }
        assert_eq!(cap.0.lock().unwrap().as_slice(), b"hi\n");
        assert!(irq.read().unwrap() >= 1, "the interrupt line was raised");
        // Line status: transmitter empty.
        let mut lsr = [0u8; 1];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn state_survives_a_save_and_restore() {
        let cap = Capture::default();
        let mut s = SerialPort::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Console::new(cap.clone()),
        );
        s.write(3, &[0x83]); // LCR: DLAB, 8 bits
        s.write(0, &[0x0c]); // divisor low (9600 baud)
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]); // scratch
        s.write(1, &[0x02]); // IER
        let saved = s.save();
        let json = serde_json::to_string(&saved).unwrap();
        let back: SerialState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut r = SerialPort::restore(irq.try_clone().unwrap(), Console::new(cap.clone()), &back)
            .unwrap();
        let mut b = [0u8; 1];
        r.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        r.read(1, &mut b);
        assert_eq!(b, [0x02]);
        assert_eq!(r.save(), saved);
        // A hostile state with an oversized input buffer is refused, not trusted.
        let bad = SerialState {
            in_buffer: vec![0; 65],
            ..saved
        };
        assert!(SerialPort::restore(irq, Console::new(cap), &bad).is_err());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let cap = Capture::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialPort::new(irq, Console::new(cap.clone()));
        assert_eq!(s.write(0, b"ab"), BusEvent::Continue);
        assert_eq!(s.write(1 << 40, b"a"), BusEvent::Continue);
        let mut wide = [0xffu8; 4];
        s.read(0, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        assert!(cap.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_broken_writer_does_not_stop_the_guest() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("closed"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut s = SerialPort::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Console::new(Broken),
        );
        assert_eq!(s.write(0, b"x"), BusEvent::Continue);
    }

    #[test]
    fn a_flooding_guest_is_capped() {
        let cap = Capture::default();
        let mut s = SerialPort::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Console::new(cap.clone()).limit(10),
        );
        for _ in 0..1000 {
            s.write(0, b"x");
        }
        let out = cap.0.lock().unwrap().clone();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "xxxxxxxxxx\n[console truncated at 10 bytes]\n");
    }
}
