//! The two bpf(2) operations aya 0.14 does not offer: waiting for running programs
//! to finish (an RCU grace period) and batched lookup-and-delete.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya::maps::{Array, MapData};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` is 128 bytes or less for every command used here; the kernel
/// requires the bytes past the command's last field to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    const fn zeroed() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        let Self(bytes) = self;
        bytes[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        let Self(bytes) = self;
        bytes[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let Self(bytes) = self;
        let mut word = [0; 4];
        word.copy_from_slice(&bytes[offset..offset + 4]);
        u32::from_ne_bytes(word)
    }
}

fn bpf(command: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, 8-byte aligned buffer of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<Attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn raw_fd(fd: BorrowedFd<'_>) -> u32 {
    // File descriptors are non-negative.
    fd.as_raw_fd() as u32
}

/// Waits until every BPF program that might have read the old value of a map has
/// finished.
///
/// The kernel offers no direct "synchronize_rcu" to userspace, but an update of a
/// map-in-map calls `synchronize_rcu()` before returning, so that userspace knows
/// no program still uses the replaced inner map (`maybe_wait_bpf_programs` in
/// kernel/bpf/syscall.c, Linux 4.20+; the kernel's own selftests rely on it). TC
/// programs run inside an RCU read-side section, so once this returns no program
/// that read the previous epoch is still running.
pub(crate) struct RcuBarrier {
    outer: OwnedFd,
    inner: Array<MapData, u32>,
}

impl RcuBarrier {
    pub(crate) fn new() -> io::Result<Self> {
        let inner = Array::<MapData, u32>::create(1, 0).map_err(io::Error::other)?;
        let mut attr = Attr::zeroed();
        attr.put_u32(0, BPF_MAP_TYPE_ARRAY_OF_MAPS);
        attr.put_u32(4, 4); // key_size
        attr.put_u32(8, 4); // value_size: an inner map fd
        attr.put_u32(12, 1); // max_entries
        attr.put_u32(20, raw_fd(inner_fd(&inner))); // inner_map_fd
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        // SAFETY: BPF_MAP_CREATE returned a new file descriptor that we now own.
        let outer = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { outer, inner })
    }

    /// Blocks for one RCU grace period (typically a few milliseconds).
    pub(crate) fn wait(&self) -> io::Result<()> {
        let Self { outer, inner } = self;
        let key = 0u32;
        let value = raw_fd(inner_fd(inner));
        let mut attr = Attr::zeroed();
        attr.put_u32(0, raw_fd(outer.as_fd()));
        attr.put_u64(8, std::ptr::from_ref(&key) as u64);
        attr.put_u64(16, std::ptr::from_ref(&value) as u64);
        attr.put_u64(24, 0); // BPF_ANY
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

fn inner_fd(map: &Array<MapData, u32>) -> BorrowedFd<'_> {
    aya::maps::IterableMap::map(map).fd().as_fd()
}

/// Result of one batched lookup-and-delete call.
pub(crate) struct Batch {
    /// Entries copied out (and deleted).
    pub(crate) count: usize,
    /// No entries remain after this batch.
    pub(crate) done: bool,
}

/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6+): moves up to `capacity` entries
/// out of a hash map. `keys` holds `capacity * key_size` bytes and `values`
/// `capacity * value_stride` bytes, where for per-CPU maps the stride is the value
/// size rounded up to 8 times the number of possible CPUs.
///
/// `token` carries the iteration position between calls (`None` on the first).
pub(crate) fn lookup_and_delete_batch(
    map: BorrowedFd<'_>,
    token: &mut Option<[u8; 64]>,
    keys: &mut [u8],
    values: &mut [u8],
    capacity: u32,
) -> io::Result<Batch> {
    let mut out_token = [0u8; 64];
    let mut attr = Attr::zeroed();
    let in_batch = token.as_ref().map_or(0, |token| token.as_ptr() as u64);
    attr.put_u64(0, in_batch);
    attr.put_u64(8, out_token.as_mut_ptr() as u64);
    attr.put_u64(16, keys.as_mut_ptr() as u64);
    attr.put_u64(24, values.as_mut_ptr() as u64);
    attr.put_u32(32, capacity);
    attr.put_u32(36, raw_fd(map));
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) {
        Ok(_) => {
            *token = Some(out_token);
            Ok(Batch {
                count: attr.get_u32(32) as usize,
                done: false,
            })
        }
        // ENOENT: the walk reached the end; `count` holds the last entries.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(Batch {
            count: attr.get_u32(32) as usize,
            done: true,
        }),
        Err(error) => Err(error),
    }
}
