//! Locations turned into devices, in one place: a path (regular file or block device) or an
//! NBD URI becomes a [`Device`]; and whether two locations name the same image.

use super::nbd::{self, NbdDevice, NbdUri};
use super::{identity, Device, FileDevice};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Opens a secondary by the location recorded at attach.
pub trait Opener: Send + Sync {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>>;
    /// Whether legs are opened for writing (false for commands that only read).
    fn writable(&self) -> bool {
        true
    }
}

/// Opens secondaries by their recorded path.
pub struct FileOpener {
    pub writable: bool,
}

impl Opener for FileOpener {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>> {
        if nbd::is_uri(location) {
            return Ok(Arc::new(open_nbd(location, self.writable)?));
        }
        Ok(Arc::new(FileDevice::open(
            Path::new(location),
            self.writable,
        )?))
    }

    fn writable(&self) -> bool {
        self.writable
    }
}

/// Connects to an NBD export; a read-only export is refused when it is to be written.
pub fn open_nbd(location: &str, writable: bool) -> io::Result<NbdDevice> {
    let uri =
        NbdUri::parse(location).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let dev = NbdDevice::connect(&uri, location)?;
    if writable && dev.read_only() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server exports it read-only; export it writable (qemu-nbd without -r, nbdkit without -r)",
        ));
    }
    Ok(dev)
}

/// Whether a recorded location names the same image as `spec`: the same device and inode
/// for paths, the same canonical URI for NBD exports.
pub fn same_file(spec: &str) -> impl Fn(&str) -> bool {
    let uri = nbd::canonical(spec);
    let id = if uri.is_none() {
        identity(Path::new(spec)).ok()
    } else {
        None
    };
    move |loc: &str| match &uri {
        Some(u) => nbd::canonical(loc).as_ref() == Some(u),
        None => id.is_some() && !nbd::is_uri(loc) && identity(Path::new(loc)).ok() == id,
    }
}
