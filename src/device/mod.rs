//! The device trait every image access goes through, and its implementation for files and
//! block devices.

pub mod nbd;
pub mod open;
pub mod probe;
pub mod sim;
pub mod sync_order;

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One image: a regular file, a block device, an NBD export, or (in tests) a simulated
/// device. What a caller may want beyond reading and writing is asked of the device as a
/// capability (a regular file? mapped? copied in the kernel? locked?), never by reaching for
/// the file behind it. (`Any`: a device can tell whether another is of its own kind, as
/// [`Device::copy_range_to`] does.)
#[allow(clippy::len_without_is_empty)]
pub trait Device: Send + Sync + std::any::Any {
    fn len(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Writes all of `buf` at `off`.
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Starts writing `len` bytes at `off` back to stable storage without waiting for it.
    /// Only a hint: durability still comes from [`Device::sync`]. A stream calls it after
    /// each chunk so the disk works while the next chunk is written into the cache, and the
    /// `sync` at a write-intent window boundary has little left to wait for.
    fn start_writeback(&self, _off: u64, _len: u64) {}
    /// Sub-ranges of `range` that may hold data; `None` when the device cannot tell
    /// (everything may hold data). Holes read as zeros.
    fn data_extents(&self, _range: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }
    /// Makes `len` bytes at `off` read as zeros (a hole where the device can).
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        write_zeros(self, off, len)
    }
    /// Writes all of `buf` at `off`, bypassing the page cache (O_DIRECT) where the device
    /// can and `buf`'s address, `off` and the length are multiples of [`DIRECT_ALIGN`];
    /// otherwise as [`Device::write_at`]. For large served writes: the data goes to the disk
    /// at once instead of piling up as dirty pages. Durability still comes from `sync`.
    fn write_direct(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_at(buf, off)
    }
    /// Reads exactly `buf.len()` bytes at `off`, bypassing the page cache (O_DIRECT) where
    /// the device can and `buf`'s address, `off` and the length are multiples of
    /// [`DIRECT_ALIGN`]; otherwise as [`Device::read_at`]. For served reads that no one
    /// reads again soon (random ones): the disk's data lands in `buf` with no copy through
    /// the page cache. A read sees every write completed before it either way (the kernel
    /// writes dirty cached pages of the range back before a direct read of it, and a
    /// direct write drops the cached pages it covers).
    fn read_direct(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.read_at(buf, off)
    }
    /// Asks the device to start reading `len` bytes at `off` into its cache without waiting
    /// (a sequential reader's next requests then find them there). Only a hint.
    fn read_ahead(&self, _off: u64, _len: u64) {}
    /// Whether [`Device::zero_range`] is fast (a hole punched, not zeros written).
    fn zero_is_fast(&self) -> bool {
        false
    }
    /// Whether the device is a regular file (not a block device, an NBD export or a
    /// simulated one): holes can be punched in it and its length is its size on disk.
    fn is_regular_file(&self) -> bool {
        false
    }
    /// Copies `len` bytes at `off` to the same offset of `to` without passing them through
    /// this process (copy_file_range, between two files or block devices). `Unsupported`
    /// where either device cannot; after any error the caller reads and writes instead,
    /// which tells which side is at fault.
    fn copy_range_to(&self, _to: &dyn Device, _off: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Tells the device `len` bytes at `off` (to its end for 0) will be read in order, once:
    /// it may read further ahead (a larger readahead window for cold caches). Only a hint.
    fn advise_sequential(&self, _off: u64, _len: u64) {}
    /// A writable shared mapping of `range`, or `None` where the device cannot be mapped
    /// (its bytes are then read and written through [`Device::read_at`] and
    /// [`Device::write_at`]). Changes reach the device at the mapping's flush.
    ///
    /// # Safety
    /// No other process may write the range while the mapping lives (the mirror lock keeps
    /// other mirrorctl processes out), and the caller turns the SIGBUS an I/O error on a
    /// mapped page raises into a clean exit.
    unsafe fn map_mut(&self, _range: Range<u64>) -> io::Result<Option<memmap2::MmapMut>> {
        Ok(None)
    }
    /// The handle the mirror lock is taken on and the runtime records (live record, control
    /// socket) are named by; `None` for a device that cannot be locked: an NBD export (the
    /// admin keeps other users away, README "Remote secondaries") or a simulated device.
    fn lock_handle(&self) -> Option<crate::lock::Handle<'_>> {
        None
    }
    /// Whether bitmap pages should be allocated before they are first written through a
    /// mapping (regular files: a write fault on a hole can hit ENOSPC, which is a SIGBUS).
    fn needs_allocation(&self) -> bool {
        false
    }
    /// Allocates backing store for a range so later writes cannot fail with ENOSPC.
    fn allocate(&self, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Reads from `input` until `buf` is full or the input ends (retrying interrupted reads);
/// returns the bytes read. For pipes and sockets, which hand out less than asked.
pub fn read_full(input: &mut dyn io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Alignment of address, offset and length for [`Device::write_direct`].
pub const DIRECT_ALIGN: usize = 4096;

/// A byte buffer aligned to [`DIRECT_ALIGN`] (so it can go to an O_DIRECT write). Its
/// length can change within its capacity, so one buffer serves request after request.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Bytes allocated (all initialised, zeroed at allocation); 0 for [`Self::empty`].
    cap: usize,
}

// SAFETY: the buffer is owned memory like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only through Deref.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, DIRECT_ALIGN).expect("buffer layout")
    }

    /// A buffer of no bytes that allocates nothing.
    pub fn empty() -> AlignedBuf {
        AlignedBuf {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            return Self::empty();
        }
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap: len }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length, at most the capacity; the bytes keep what they held before.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len past the capacity");
        self.len = len;
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: ptr points to cap >= len initialised (zeroed at allocation) bytes owned
        // by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.cap == 0 {
            return &mut [];
        }
        // SAFETY: as for Deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in `zeroed` with this same layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

/// Whether `buf` and `off` suit an O_DIRECT transfer ([`DIRECT_ALIGN`]).
fn direct_aligned(buf: &[u8], off: u64) -> bool {
    let a = DIRECT_ALIGN as u64;
    (buf.as_ptr() as usize) % DIRECT_ALIGN == 0 && off % a == 0 && (buf.len() as u64) % a == 0
}

pub fn write_zeros<D: Device + ?Sized>(dev: &D, mut off: u64, len: u64) -> io::Result<()> {
    let end = off + len;
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    while off < end {
        let n = ((end - off) as usize).min(zeros.len());
        dev.write_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// BLKROGET: whether the kernel has the block device set read-only.
fn block_read_only(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET (_IO(0x12, 94)) writes one int through the pointer, which outlives
    // the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), 0x125E as _, &mut ro) };
    r == 0 && ro != 0
}

/// The error for a path that is neither a regular file nor a block device.
fn not_an_image(path: &Path, t: &std::fs::FileType) -> io::Error {
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {kind}, not a regular file or block device: give an image file or a disk",
            path.display()
        ),
    )
}

/// A regular file or a block device.
pub struct FileDevice {
    file: File,
    path: PathBuf,
    len: u64,
    block: bool,
    /// A second descriptor of the same file with O_DIRECT and the same access mode, opened
    /// at the first direct read or write (`None` where the file system refuses it).
    direct: std::sync::OnceLock<Option<File>>,
    /// Open file descriptions for syncs, one per sync in progress, and the first sync error
    /// (every later sync fails with it). Linux reports a writeback error once per open file
    /// description; a concurrent flush must never see a sync succeed after writes were
    /// lost, or it would count them durable (and a leg failing in the other flush would
    /// miss them in its log): rule Y1.
    syncs: sync_order::SyncSlots<File>,
}

/// Identity of an image for "is this the same thing" checks: (device, inode) for files,
/// the device number for block devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    File { dev: u64, ino: u64 },
    Block { rdev: u64 },
}

pub fn identity(path: &Path) -> io::Result<Identity> {
    let m = std::fs::metadata(path)?;
    Ok(if m.file_type().is_block_device() {
        Identity::Block { rdev: m.rdev() }
    } else {
        Identity::File {
            dev: m.dev(),
            ino: m.ino(),
        }
    })
}

impl FileDevice {
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        // Only regular files and block devices, checked before opening: opening a FIFO
        // blocks until a writer comes, a character device may have side effects.
        let m = std::fs::metadata(path)?;
        let t = m.file_type();
        if !t.is_file() && !t.is_block_device() {
            return Err(not_an_image(path, &t));
        }
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        if writable && t.is_block_device() && block_read_only(&file) {
            // Opening for writing succeeds on a read-only block device; every write (and a
            // writable mapping) would fail later with a less clear error.
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                format!(
                    "{} is a read-only block device (losetup -r, blockdev --setro, or write-protected)",
                    path.display()
                ),
            ));
        }
        Self::from_file(file, path)
    }

    pub fn from_file(file: File, path: &Path) -> io::Result<Self> {
        let m = file.metadata()?;
        let block = m.file_type().is_block_device();
        if !block && !m.file_type().is_file() {
            return Err(not_an_image(path, &m.file_type()));
        }
        let len = if block {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0))?
        } else {
            m.len()
        };
        if block && len == 0 {
            // A detached loop device or a removed disk: the node is there, the medium not.
            return Err(io::Error::other(format!(
                "{} is a block device of size 0: no medium (a detached loop device, or a disk that was removed?)",
                path.display()
            )));
        }
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            len,
            block,
            direct: std::sync::OnceLock::new(),
            syncs: sync_order::SyncSlots::default(),
        })
    }

    /// An error if the file is now shorter than `need` bytes (truncated behind our back;
    /// at most as long as it was when opened).
    fn shrunk(&self, need: u64) -> Option<io::Error> {
        if self.block {
            return None;
        }
        let now = self.file.metadata().ok()?.len();
        (now < need.min(self.len)).then(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} shrank to {now} bytes while in use (it had {}): what was past its new end is gone",
                    self.path.display(),
                    self.len
                ),
            )
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another open file description of this same file (found through /proc, so a rename
    /// does not matter), with the access mode of the device's own and `flags`.
    fn reopen(&self, flags: i32) -> io::Result<File> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let fd = self.file.as_raw_fd();
        // SAFETY: F_GETFL on a descriptor this device owns; no pointer involved.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let mode = if fl >= 0 {
            fl & libc::O_ACCMODE
        } else {
            libc::O_RDONLY
        };
        OpenOptions::new()
            .read(mode != libc::O_WRONLY)
            .write(mode != libc::O_RDONLY)
            .custom_flags(flags)
            .open(format!("/proc/self/fd/{fd}"))
    }

    /// Y1: [`sync_order::SLOTS`] open file descriptions of this same file for syncs.
    /// Without /proc, one: the device's own (its syncs then run one at a time, which Y1
    /// allows).
    fn sync_descriptions(&self) -> io::Result<Vec<File>> {
        let mut v: Vec<File> = (0..sync_order::SLOTS)
            .map_while(|_| self.reopen(0).ok())
            .collect();
        if v.is_empty() {
            v.push(self.file.try_clone()?);
        }
        Ok(v)
    }

    /// The O_DIRECT descriptor, opened with the access mode of the device's own at first
    /// use; `None` where the file system refuses O_DIRECT (tmpfs).
    fn direct(&self) -> Option<&File> {
        self.direct
            .get_or_init(|| self.reopen(libc::O_DIRECT).ok())
            .as_ref()
    }

    pub fn is_block(&self) -> bool {
        self.block
    }

    /// The handle the mirror lock is taken on ([`Device::lock_handle`], which a file or
    /// block device always has).
    pub fn handle(&self) -> crate::lock::Handle<'_> {
        crate::lock::Handle::new(&self.file)
    }

    /// Makes a regular file `len` bytes long (ftruncate), and the device that long.
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }
}

/// Copies `len` bytes at `off` from one file to the same offset of another in the kernel.
fn copy_file_range_all(from: &File, to: &File, off: u64, len: u64) -> io::Result<()> {
    let (mut src, mut dst) = (off, off);
    let end = off + len;
    while src < end {
        let want = (end - src) as usize;
        let n = rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    }
    Ok(())
}

impl Device for FileDevice {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        // A short read is an error, never zeros: the image ended early (it shrank, or a
        // device went away).
        self.file.read_exact_at(buf, off).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.shrunk(off + buf.len() as u64).unwrap_or_else(|| {
                    io::Error::new(e.kind(), format!("short read at byte {off}"))
                })
            } else {
                e
            }
        })
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }

    fn write_direct(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if direct_aligned(buf, off) {
            if let Some(f) = self.direct() {
                return f.write_all_at(buf, off);
            }
        }
        self.write_at(buf, off)
    }

    fn read_direct(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        if direct_aligned(buf, off) && off + buf.len() as u64 <= self.len {
            if let Some(f) = self.direct() {
                // One pread for the whole request; a short one (the file shrank) is the
                // same error as through the cache.
                return match f.read_exact_at(buf, off) {
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        Err(self.shrunk(off + buf.len() as u64).unwrap_or_else(|| {
                            io::Error::new(e.kind(), format!("short read at byte {off}"))
                        }))
                    }
                    r => r,
                };
            }
        }
        self.read_at(buf, off)
    }

    fn read_ahead(&self, off: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // In pieces: the kernel reads at most the larger of the device's readahead and its
        // largest request per WILLNEED (128 KiB and 1280 KiB by default), whatever the
        // length asked for.
        const PIECE: u64 = 512 << 10;
        let end = off + len;
        let mut at = off;
        while at < end {
            let n = PIECE.min(end - at);
            // SAFETY: a plain syscall on a descriptor this device owns; a hint, errors
            // ignored.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    at as libc::off_t,
                    n as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
            at += n;
        }
    }

    fn sync(&self) -> io::Result<()> {
        // Y1: on a description of its own, told of every error since its last sync.
        self.syncs.sync(|| self.sync_descriptions())?;
        // A file truncated behind our back (`truncate -s`, a careless `cp`): writes past its
        // new end extend it again with holes where the data was, so the loss shows only
        // here, at the sync point, as the error it is (exit 4 for a primary; a leg is
        // fractured).
        match self.shrunk(self.len) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn start_writeback(&self, off: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor this device owns; errors are ignored
        // because `sync` reports them (it is only a hint).
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                off as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    fn data_extents(&self, range: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        if self.block {
            return Ok(None);
        }
        use rustix::fs::{seek, SeekFrom};
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut pos = range.start;
        while pos < range.end {
            let data = match seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
            if data >= range.end {
                break;
            }
            let hole = seek(&self.file, SeekFrom::Hole(data))?;
            let end = hole.min(range.end);
            match out.last_mut() {
                Some(l) if l.end >= data => l.end = end,
                _ => out.push(data..end),
            }
            pos = hole;
        }
        // Holes past a new end of file are not holes: the file was truncated. Checked
        // after the seeks, so a truncation during them is caught too.
        if let Some(e) = self.shrunk(range.end) {
            return Err(e);
        }
        Ok(Some(out))
    }

    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.block {
            // BLKZEROOUT = _IO(0x12, 127): the device zeroes the range (write-zeroes or
            // discard with zeroing where it can).
            let range: [u64; 2] = [off, len];
            // SAFETY: BLKZEROOUT reads a [u64; 2] from the pointer, which outlives the call.
            let r = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    0x127F as _,
                    range.as_ptr(),
                )
            };
            if r == 0 {
                return Ok(());
            }
            return write_zeros(self, off, len);
        }
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(self, off, len),
            Err(e) => Err(e.into()),
        }
    }

    fn zero_is_fast(&self) -> bool {
        !self.block
    }

    fn is_regular_file(&self) -> bool {
        !self.block
    }

    fn copy_range_to(&self, to: &dyn Device, off: u64, len: u64) -> io::Result<()> {
        let to: &dyn std::any::Any = to;
        match to.downcast_ref::<FileDevice>() {
            Some(to) => copy_file_range_all(&self.file, &to.file, off, len),
            None => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    fn advise_sequential(&self, off: u64, len: u64) {
        let _ = rustix::fs::fadvise(
            &self.file,
            off,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::Sequential,
        );
    }

    unsafe fn map_mut(&self, range: Range<u64>) -> io::Result<Option<memmap2::MmapMut>> {
        // SAFETY: the caller keeps other processes from writing the range and handles
        // SIGBUS (this method's contract).
        let m = unsafe {
            memmap2::MmapOptions::new()
                .offset(range.start)
                .len((range.end - range.start) as usize)
                .map_mut(&self.file)?
        };
        Ok(Some(m))
    }

    fn lock_handle(&self) -> Option<crate::lock::Handle<'_>> {
        Some(self.handle())
    }

    fn needs_allocation(&self) -> bool {
        !self.block
    }

    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(&self.file, FallocateFlags::KEEP_SIZE, off, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open descriptors of this process that refer to `path` (through /proc/self/fd).
    fn descriptors_of(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t == path)
            .count()
    }

    #[test]
    fn a_file_is_synced_on_descriptions_of_its_own_opened_together_at_its_first_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let p = p.canonicalize().unwrap();
        let d = FileDevice::open(&p, true).unwrap();
        let before = descriptors_of(&p);
        d.write_at(&[1; 4096], 0).unwrap();
        assert_eq!(descriptors_of(&p), before, "opened before any sync");
        // Y1: every sync description opened at the first, none later.
        d.sync().unwrap();
        assert_eq!(descriptors_of(&p), before + sync_order::SLOTS);
        std::thread::scope(|s| {
            for _ in 0..3 * sync_order::SLOTS {
                s.spawn(|| d.sync().unwrap());
            }
        });
        assert_eq!(descriptors_of(&p), before + sync_order::SLOTS);
        drop(d);
        assert_eq!(descriptors_of(&p), before - 1);
    }

    #[test]
    fn direct_writes_aligned_or_not_read_back_the_same_and_buffers_are_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let d = FileDevice::open(&p, true).unwrap();
        let mut a = AlignedBuf::zeroed(256 << 10);
        assert_eq!(a.as_ptr() as usize % DIRECT_ALIGN, 0);
        a.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        // Aligned: O_DIRECT where the file system allows it.
        d.write_direct(&a, 64 << 10).unwrap();
        // Unaligned offset and length: the buffered path.
        d.write_direct(&a[1..5000], 3).unwrap();
        // A buffered write after a direct one over the same bytes wins, and reads see it.
        d.write_at(&[9u8; 4096], 64 << 10).unwrap();
        d.sync().unwrap();
        let mut back = vec![0u8; 256 << 10];
        d.read_at(&mut back, 64 << 10).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 9));
        assert_eq!(&back[4096..], &a[4096..]);
        let mut head = vec![0u8; 4999];
        d.read_at(&mut head, 3).unwrap();
        assert_eq!(&head[..], &a[1..5000]);
        assert!(AlignedBuf::zeroed(0).is_empty());
    }

    #[test]
    fn direct_reads_see_every_completed_write_and_fall_back_where_unaligned_or_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let d = FileDevice::open(&p, true).unwrap();
        let mut a = AlignedBuf::zeroed(64 << 10);
        a.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 253) as u8);
        // A buffered write still in the page cache: a direct read sees it.
        d.write_at(&a, 128 << 10).unwrap();
        let mut back = AlignedBuf::zeroed(64 << 10);
        d.read_direct(&mut back, 128 << 10).unwrap();
        assert_eq!(&back[..], &a[..]);
        // A direct write over part of it, then a cached read and a direct read agree.
        let ones = {
            let mut o = AlignedBuf::zeroed(8192);
            o.fill(1);
            o
        };
        d.write_direct(&ones, 132 << 10).unwrap();
        let mut cached = vec![0u8; 64 << 10];
        d.read_at(&mut cached, 128 << 10).unwrap();
        d.read_direct(&mut back, 128 << 10).unwrap();
        assert_eq!(&back[..], &cached[..]);
        assert!(back[4096..12288].iter().all(|&b| b == 1));
        // Unaligned offset or length: through the cache, same bytes.
        let mut odd = vec![0u8; 5000];
        d.read_direct(&mut odd, (128 << 10) + 3).unwrap();
        assert_eq!(&odd[..], &cached[3..5003]);
        // Past the end: an error, not zeros.
        let mut tail = AlignedBuf::zeroed(8192);
        assert!(d.read_direct(&mut tail, (1 << 20) - 4096).is_err());
        d.read_ahead(0, 1 << 20);
    }

    /// A file of `len` bytes holding `i % 251` at byte `i`, opened writable.
    fn patterned(dir: &Path, name: &str, len: usize) -> FileDevice {
        let p = dir.join(name);
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, bytes).unwrap();
        FileDevice::open(&p, true).unwrap()
    }

    fn simulated(len: u64) -> sim::SimDevice {
        sim::SimDevice::new(&sim::World::new(), len)
    }

    #[test]
    fn a_regular_file_says_it_is_one_and_a_simulated_device_does_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(patterned(dir.path(), "img", 4096).is_regular_file());
        assert!(!simulated(4096).is_regular_file());
    }

    #[test]
    fn a_range_copied_in_the_kernel_between_two_files_reads_back_the_same_and_other_devices_are_unsupported(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let from = patterned(dir.path(), "from", 1 << 20);
        let p = dir.path().join("to");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let to = FileDevice::open(&p, true).unwrap();
        from.copy_range_to(&to, 4096, 300 << 10).unwrap();
        let mut want = vec![0u8; 1 << 20];
        from.read_at(&mut want, 0).unwrap();
        want[..4096].fill(0);
        want[4096 + (300 << 10)..].fill(0);
        assert_eq!(std::fs::read(&p).unwrap(), want);
        // A simulated device on either side: the caller reads and writes instead.
        let s = simulated(1 << 20);
        let e = from.copy_range_to(&s, 0, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        let e = s.copy_range_to(&to, 0, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(s.contents().iter().all(|&b| b == 0));
    }

    #[test]
    fn bytes_written_through_a_files_mapping_read_back_through_the_device_and_a_simulated_device_has_none(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = patterned(dir.path(), "img", 64 << 10);
        // SAFETY: a private temporary file no other process writes.
        let mut m = unsafe { d.map_mut(8192..16384) }.unwrap().unwrap();
        assert_eq!(m[0], (8192 % 251) as u8, "the mapping starts at its range");
        m[..4096].fill(0xab);
        m.flush().unwrap();
        let mut back = vec![0u8; 4097];
        d.read_at(&mut back, 8192).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0xab));
        assert_eq!(back[4096], ((8192 + 4096) % 251) as u8);
        // SAFETY: as above; nothing is mapped.
        assert!(unsafe { simulated(1 << 20).map_mut(0..4096) }
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_file_locked_through_its_handle_is_busy_for_a_second_open_and_a_simulated_device_has_no_handle(
    ) {
        use crate::lock::{Mode, Wait};
        let dir = tempfile::tempdir().unwrap();
        let a = patterned(dir.path(), "img", 4096);
        let b = FileDevice::open(&dir.path().join("img"), false).unwrap();
        a.handle().lock(Mode::Exclusive, Wait::No, "img").unwrap();
        let e = b.handle().lock(Mode::Shared, Wait::No, "img").unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::Busy, "{e}");
        assert!(e.to_string().contains("img is busy"), "{e}");
        // Through the trait, as the engine asks: the same lock.
        let dyn_b: &dyn Device = &b;
        let h = dyn_b.lock_handle().expect("a file can be locked");
        assert!(h.lock(Mode::Shared, Wait::No, "img").is_err());
        drop(a);
        h.lock(Mode::Shared, Wait::No, "img").unwrap();
        assert!(simulated(4096).lock_handle().is_none());
    }

    #[test]
    fn setting_the_length_of_a_file_device_grows_the_file_and_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = patterned(dir.path(), "img", 4096);
        d.set_len(1 << 20).unwrap();
        assert_eq!(d.len(), 1 << 20);
        assert_eq!(
            std::fs::metadata(dir.path().join("img")).unwrap().len(),
            1 << 20
        );
        let mut tail = [1u8; 16];
        d.read_at(&mut tail, (1 << 20) - 16).unwrap();
        assert_eq!(tail, [0u8; 16]);
        d.sync().unwrap();
    }

    #[test]
    fn an_aligned_buffer_shrinks_and_grows_within_its_capacity_keeping_its_bytes() {
        let mut b = AlignedBuf::zeroed(8192);
        b.fill(7);
        b.set_len(100);
        assert_eq!(b.len(), 100);
        b.set_len(8192);
        assert!(
            b.iter().all(|&x| x == 7),
            "bytes past a shorter length are kept"
        );
        assert!(std::panic::catch_unwind(move || b.set_len(8193)).is_err());
        let mut e = AlignedBuf::empty();
        assert_eq!((e.len(), e.capacity()), (0, 0));
        assert!(e.iter_mut().next().is_none());
    }
}
