//! `sandbox-init`: the guest agent, PID 1 of the sandbox microVM. Built static; all logic is in
//! [`sandbox::guest`].

fn main() {
    sandbox::guest::main()
}
