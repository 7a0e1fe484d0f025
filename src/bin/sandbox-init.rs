//! `sandbox-init`: the guest agent, PID 1 of the sandbox microVM. Built static; all logic is in
//! [`sandkasten::guest`].

fn main() {
    sandkasten::guest::main()
}
