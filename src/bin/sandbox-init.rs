//! `sandbox-init`: the guest agent, PID 1 of the sandbox microVM. Built static; all logic is in
//! the crate's `guest` module.

fn main() {
    sandkasten::agent_main()
}
