//! Attaches the testkit's `pass_through` classifier (it does nothing) with
//! TCX at ingress and egress of each interface named on the command line,
//! says so on stderr, and keeps it there until killed: the floor that
//! attaching any program costs, for `cargo xtask bench --rates`.
//!
//! TCX needs Linux 6.6.

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
use flow_agent::datapath::TESTKIT_OBJECT;

fn main() -> anyhow::Result<()> {
    let interfaces: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!interfaces.is_empty(), "usage: attach_empty INTERFACE...");
    let mut ebpf = aya::Ebpf::load(TESTKIT_OBJECT)?;
    let program: &mut SchedClassifier = ebpf
        .program_mut("pass_through")
        .ok_or_else(|| anyhow::anyhow!("no pass_through program in the testkit"))?
        .try_into()?;
    program.load()?;
    for interface in &interfaces {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            program.attach_with_options(
                interface,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
        }
    }
    eprintln!("attached to {}", interfaces.join(" "));
    loop {
        std::thread::park();
    }
}
