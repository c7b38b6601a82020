//! Classifiers used only by tests and benchmarks.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};

/// Drops every packet: plays a CNI program that redirects or consumes packets, to
/// show that flow-agent, attached ahead of it, still sees them.
#[classifier]
pub fn drop_all(_ctx: TcContext) -> i32 {
    TC_ACT_SHOT as i32
}

/// Does nothing: the floor against which the classifier's per-packet cost is measured.
#[classifier]
pub fn pass_through(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
