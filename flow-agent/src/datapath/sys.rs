//! The two bpf(2) operations aya 0.14 does not offer: waiting for running programs
//! to finish (an RCU grace period) and batched lookup-and-delete.
//!
//! The parts of `union bpf_attr` and `enum bpf_cmd` they use are declared here with
//! the kernel's names (include/uapi/linux/bpf.h), their offsets pinned by tests:
//! aya 0.14 does not re-export aya-obj's generated bindings.
//!
//! Every call goes through one function, [`bpf`], that unit tests answer per
//! thread with a fake kernel (`fake::replace`), as aya's own map tests do with
//! `override_syscall`: the batched drain's rare paths (a kernel without batch
//! operations) are tested without root.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya::{
    Pod,
    maps::{Array, IterableMap as _, MapData, PerCpuHashMap},
};

/// The commands used here, from `enum bpf_cmd`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::enum_variant_names,
    reason = "the kernel's names: BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, ..."
)]
pub(super) enum BpfCmd {
    /// `BPF_MAP_CREATE`.
    MapCreate = 0,
    /// `BPF_MAP_UPDATE_ELEM`.
    MapUpdateElem = 2,
    /// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6+).
    MapLookupAndDeleteBatch = 25,
}

/// `BPF_MAP_TYPE_ARRAY_OF_MAPS` of `enum bpf_map_type`.
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `BPF_ANY`: create the element or update it.
const BPF_ANY: u64 = 0;

/// `BPF_MAP_CREATE`'s part of `union bpf_attr`, up to `inner_map_fd`; the
/// kernel reads the fields after it as zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// The `BPF_MAP_*_ELEM` commands' part of `union bpf_attr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct MapElemAttr {
    map_fd: u32,
    /// `key` is an `__aligned_u64`.
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `BPF_MAP_*_BATCH` commands' part of `union bpf_attr` (`attr.batch`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct BatchAttr {
    /// Where the previous call stopped; zero (null) on the first call.
    pub(super) in_batch: u64,
    /// Where this call stopped, written by the kernel.
    pub(super) out_batch: u64,
    /// Buffer of `count` keys.
    pub(super) keys: u64,
    /// Buffer of `count` values.
    pub(super) values: u64,
    /// In: the capacity of `keys` and `values`, in entries; out: the entries
    /// copied out.
    pub(super) count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`, with the parts the commands above use.
#[repr(C, align(8))]
pub(super) union BpfAttr {
    map_create: MapCreateAttr,
    map_elem: MapElemAttr,
    batch: BatchAttr,
    /// The size passed to the kernel: 128 bytes cover every command used here.
    /// The kernel requires the bytes past the command's last field to be zero.
    bytes: [u8; 128],
}

impl BpfAttr {
    const fn zeroed() -> Self {
        Self { bytes: [0; 128] }
    }

    /// The batch part, as the kernel left it.
    pub(super) fn batch(&self) -> BatchAttr {
        // SAFETY: every byte of the union is initialized (zeroed, then whole
        // parts written), and BatchAttr is integers only: any bytes are a value.
        unsafe { self.batch }
    }
}

/// One bpf(2) call: the kernel's return value (a new descriptor for
/// `BPF_MAP_CREATE`), or its errno.
fn bpf(command: BpfCmd, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    #[cfg(test)]
    if let Some(fake) = fake::current() {
        return fake(command, attr);
    }
    syscall(command, attr)
}

/// bpf(2) itself.
fn syscall(command: BpfCmd, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, 8-byte aligned buffer of the size
    // passed, and every pointer in it is valid for what the command reads or
    // writes (each caller's contract).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<BpfAttr>(),
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
        let mut attr = BpfAttr::zeroed();
        attr.map_create = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            // An inner map's descriptor.
            value_size: 4,
            max_entries: 1,
            map_flags: 0,
            inner_map_fd: raw_fd(inner_fd(&inner)),
        };
        let fd = bpf(BpfCmd::MapCreate, &mut attr)?;
        // SAFETY: BPF_MAP_CREATE returned a new file descriptor that we now own.
        let outer = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { outer, inner })
    }

    /// Blocks for one RCU grace period (typically a few milliseconds).
    pub(crate) fn wait(&self) -> io::Result<()> {
        let Self { outer, inner } = self;
        let key = 0u32;
        let value = raw_fd(inner_fd(inner));
        let mut attr = BpfAttr::zeroed();
        attr.map_elem = MapElemAttr {
            map_fd: raw_fd(outer.as_fd()),
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            flags: BPF_ANY,
        };
        bpf(BpfCmd::MapUpdateElem, &mut attr).map(drop)
    }
}

fn inner_fd(map: &Array<MapData, u32>) -> BorrowedFd<'_> {
    map.map().fd().as_fd()
}

/// A per-CPU hash map as batched lookup-and-delete sees it: a descriptor, and
/// the layout of the `K` keys and `V` values the kernel copies out.
pub(crate) struct BatchMap<'a, K, V> {
    fd: BorrowedFd<'a>,
    cpus: usize,
    entries: PhantomData<(K, V)>,
}

impl<'a, K: Pod, V: Pod> BatchMap<'a, K, V> {
    /// aya checked, when it opened `map`, that it is a per-CPU hash map of
    /// `K`-sized keys and `V`-sized values; `nr_cpus` counts the possible CPUs
    /// as the kernel does (`/sys/devices/system/cpu/possible`).
    pub(crate) fn per_cpu_hash(map: &'a PerCpuHashMap<MapData, K, V>) -> io::Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        Ok(Self {
            fd: map.map().fd().as_fd(),
            cpus,
            entries: PhantomData,
        })
    }

    /// # Safety
    ///
    /// Whatever answers bpf(2) for `fd` (a fake kernel, in tests) writes no
    /// more than a per-CPU hash map of `K` to `V` on `cpus` possible CPUs
    /// would.
    #[cfg(test)]
    pub(crate) unsafe fn from_raw(fd: BorrowedFd<'a>, cpus: usize) -> Self {
        Self {
            fd,
            cpus,
            entries: PhantomData,
        }
    }

    /// Possible CPUs: each value comes as one slot per possible CPU.
    pub(crate) fn cpus(&self) -> usize {
        self.cpus
    }

    /// Bytes between two CPUs' slots of a value: the kernel rounds each up to
    /// 8 bytes.
    pub(crate) fn value_stride() -> usize {
        size_of::<V>().next_multiple_of(8)
    }
}

/// Result of one batched lookup-and-delete call.
pub(crate) struct Batch {
    /// Entries copied out (and deleted), at most the capacity asked for.
    pub(crate) count: usize,
    /// No entries remain after this batch.
    pub(crate) done: bool,
}

/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6+): moves up to `capacity` entries
/// out of a hash map. `keys` must hold `capacity` keys and `values` `capacity`
/// values of [`BatchMap::cpus`] slots of [`BatchMap::value_stride`] bytes each;
/// shorter buffers are refused (`InvalidInput`) before the kernel is asked.
///
/// `token` carries the iteration position between calls (`None` on the first);
/// hash maps keep a bucket index in it, 4 bytes.
pub(crate) fn lookup_and_delete_batch<K: Pod, V: Pod>(
    map: &BatchMap<'_, K, V>,
    token: &mut Option<[u8; 64]>,
    keys: &mut [u8],
    values: &mut [u8],
    capacity: u32,
) -> io::Result<Batch> {
    let BatchMap { fd, cpus, .. } = *map;
    let entries = capacity as usize;
    let keys_needed = entries.checked_mul(size_of::<K>());
    let values_needed = entries
        .checked_mul(cpus)
        .and_then(|slots| slots.checked_mul(BatchMap::<K, V>::value_stride()));
    match (keys_needed, values_needed) {
        (Some(keys_needed), Some(values_needed))
            if keys.len() >= keys_needed && values.len() >= values_needed => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a batch of {capacity} entries does not fit buffers of {} key bytes and {} value bytes",
                    keys.len(),
                    values.len()
                ),
            ));
        }
    }
    let mut out_token = [0u8; 64];
    let mut attr = BpfAttr::zeroed();
    attr.batch = BatchAttr {
        in_batch: token.as_ref().map_or(0, |token| token.as_ptr() as u64),
        out_batch: out_token.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: capacity,
        map_fd: raw_fd(fd),
        elem_flags: 0,
        flags: 0,
    };
    let result = bpf(BpfCmd::MapLookupAndDeleteBatch, &mut attr);
    let count = attr.batch().count.min(capacity) as usize;
    match result {
        Ok(_) => {
            *token = Some(out_token);
            Ok(Batch { count, done: false })
        }
        // ENOENT: the walk reached the end; `count` holds the last entries.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(Batch { count, done: true }),
        Err(error) => Err(error),
    }
}

/// A fake kernel for unit tests: answers this thread's bpf(2) calls.
#[cfg(test)]
pub(super) mod fake {
    use std::{cell::Cell, io};

    use aya::Pod;

    use super::{BatchAttr, BatchMap, BpfAttr, BpfCmd};

    /// What answers a call: the kernel's return value or errno.
    pub(in crate::datapath) type Bpf = fn(BpfCmd, &mut BpfAttr) -> io::Result<libc::c_long>;

    thread_local! {
        static FAKE: Cell<Option<Bpf>> = const { Cell::new(None) };
    }

    pub(super) fn current() -> Option<Bpf> {
        FAKE.get()
    }

    /// Answers this thread's bpf(2) calls with `fake` until the guard drops.
    pub(in crate::datapath) fn replace(fake: Bpf) -> Restore {
        FAKE.set(Some(fake));
        Restore
    }

    /// Gives bpf(2) back to the kernel when dropped.
    pub(in crate::datapath) struct Restore;

    impl Drop for Restore {
        fn drop(&mut self) {
            FAKE.set(None);
        }
    }

    /// Passes a call on to the kernel: for a fake that answers some
    /// commands only.
    pub(in crate::datapath) fn kernel(
        command: BpfCmd,
        attr: &mut BpfAttr,
    ) -> io::Result<libc::c_long> {
        super::syscall(command, attr)
    }

    /// An errno, as the kernel returns it.
    pub(in crate::datapath) fn errno(errno: i32) -> io::Result<libc::c_long> {
        Err(io::Error::from_raw_os_error(errno))
    }

    /// Answers a batched lookup-and-delete with `entries`, each a key and its
    /// per-CPU values, laid out as the kernel lays them out: keys back to back,
    /// values in slots of [`BatchMap::value_stride`] bytes.
    ///
    /// # Safety
    ///
    /// `attr` comes from [`super::lookup_and_delete_batch`] on a
    /// `BatchMap<K, V>` of as many CPUs as each entry has values.
    pub(in crate::datapath) unsafe fn answer_batch<K: Pod, V: Pod>(
        attr: &mut BpfAttr,
        entries: &[(K, &[V])],
    ) {
        let BatchAttr {
            keys,
            values,
            count: capacity,
            ..
        } = attr.batch();
        assert!(
            entries.len() <= capacity as usize,
            "more entries than asked for"
        );
        let stride = BatchMap::<K, V>::value_stride();
        for (index, (key, slots)) in entries.iter().enumerate() {
            // SAFETY: `keys` holds `capacity` keys (checked by
            // lookup_and_delete_batch) and index < capacity.
            unsafe { std::ptr::write_unaligned((keys as *mut K).add(index), *key) };
            for (cpu, slot) in slots.iter().enumerate() {
                let offset = (index * slots.len() + cpu) * stride;
                // SAFETY: `values` holds `capacity` values of one slot per CPU
                // (checked likewise), and there are `slots.len()` CPUs.
                unsafe {
                    std::ptr::write_unaligned((values as *mut u8).add(offset).cast::<V>(), *slot);
                }
            }
        }
        attr.batch.count = entries.len() as u32;
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn attr_fields_sit_at_the_kernel_offsets() {
        // include/uapi/linux/bpf.h: the anonymous BPF_MAP_CREATE struct.
        assert_eq!(offset_of!(MapCreateAttr, map_type), 0);
        assert_eq!(offset_of!(MapCreateAttr, key_size), 4);
        assert_eq!(offset_of!(MapCreateAttr, value_size), 8);
        assert_eq!(offset_of!(MapCreateAttr, max_entries), 12);
        assert_eq!(offset_of!(MapCreateAttr, inner_map_fd), 20);
        // The BPF_MAP_*_ELEM struct.
        assert_eq!(offset_of!(MapElemAttr, map_fd), 0);
        assert_eq!(offset_of!(MapElemAttr, key), 8);
        assert_eq!(offset_of!(MapElemAttr, value), 16);
        assert_eq!(offset_of!(MapElemAttr, flags), 24);
        // struct batch.
        assert_eq!(offset_of!(BatchAttr, in_batch), 0);
        assert_eq!(offset_of!(BatchAttr, out_batch), 8);
        assert_eq!(offset_of!(BatchAttr, keys), 16);
        assert_eq!(offset_of!(BatchAttr, values), 24);
        assert_eq!(offset_of!(BatchAttr, count), 32);
        assert_eq!(offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(offset_of!(BatchAttr, elem_flags), 40);
        assert_eq!(offset_of!(BatchAttr, flags), 48);
        assert_eq!((size_of::<BpfAttr>(), align_of::<BpfAttr>()), (128, 8));
    }

    #[test]
    fn a_batch_larger_than_its_buffers_is_refused_before_the_kernel_sees_it() {
        let _fake = fake::replace(|_, _| panic!("the kernel was asked"));
        let stdin = io::stdin();
        // SAFETY: the fake kernel writes nothing.
        let map = unsafe { BatchMap::<u64, u64>::from_raw(stdin.as_fd(), 2) };
        let mut keys = vec![0u8; 4 * 8];
        let mut values = vec![0u8; 4 * 2 * 8];
        for (keys_len, values_len) in [(4 * 8 - 1, 4 * 2 * 8), (4 * 8, 4 * 2 * 8 - 1)] {
            let error = lookup_and_delete_batch(
                &map,
                &mut None,
                &mut keys[..keys_len],
                &mut values[..values_len],
                4,
            )
            .err()
            .unwrap();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
        let error = lookup_and_delete_batch(&map, &mut None, &mut keys, &mut values, u32::MAX)
            .err()
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_end_of_the_walk_is_done_with_the_last_entries_and_other_errnos_are_kept() {
        let stdin = io::stdin();
        // SAFETY: the fake kernels write nothing but the count.
        let map = unsafe { BatchMap::<u64, u64>::from_raw(stdin.as_fd(), 1) };
        let mut keys = vec![0u8; 4 * 8];
        let mut values = vec![0u8; 4 * 8];
        let _fake = fake::replace(|command, attr| {
            assert_eq!(command, BpfCmd::MapLookupAndDeleteBatch);
            attr.batch = BatchAttr {
                count: 3,
                ..attr.batch()
            };
            fake::errno(libc::ENOENT)
        });
        let mut token = None;
        let Batch { count, done } =
            lookup_and_delete_batch(&map, &mut token, &mut keys, &mut values, 4).unwrap();
        assert_eq!((count, done, token), (3, true, None));
        let _fake = fake::replace(|_, _| fake::errno(libc::EFAULT));
        let error = lookup_and_delete_batch(&map, &mut token, &mut keys, &mut values, 4)
            .err()
            .unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::EFAULT));
    }
}
