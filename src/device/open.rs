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
    // Named in errors by its short form (the TLS files are not the cause of anything).
    let dev = NbdDevice::connect(&uri, &nbd::display(location))?;
    if writable && dev.read_only() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server exports it read-only; export it writable (qemu-nbd without -r, nbdkit without -r)",
        ));
    }
    Ok(dev)
}

/// Whether a recorded location names the same image as `spec`: the same device and inode
/// for paths, the same export for NBD URIs (with TLS or without).
pub fn same_file(spec: &str) -> impl Fn(&str) -> bool {
    let uri = nbd::identity(spec);
    let id = if uri.is_none() {
        identity(Path::new(spec)).ok()
    } else {
        None
    };
    move |loc: &str| match &uri {
        Some(u) => nbd::identity(loc).as_ref() == Some(u),
        None => id.is_some() && !nbd::is_uri(loc) && identity(Path::new(loc)).ok() == id,
    }
}

/// Where udev keeps names for block devices that do not change when the kernel numbers
/// disks differently (sdb becoming sdc, loop devices renumbered).
pub const DEV_DISK: &str = "/dev/disk";
/// The kinds of stable names, best first: by-id (the disk's model and serial, or WWN, the
/// same on any machine), by-partuuid (a GPT partition's UUID), by-path (the controller
/// port). by-uuid and by-label are left out: they name a filesystem's content, which
/// mirrorctl writes over.
const STABLE_KINDS: [&str; 3] = ["by-id", "by-partuuid", "by-path"];

/// The name to record for the block device at `path` when the admin gave its kernel name
/// (/dev/sdb, /dev/nvme0n1p2, /dev/loop3), which can change at the next boot: a /dev/disk
/// link to the same device, if udev made one. `None` keeps the path as given: a regular
/// file, a device without such a link, or a name the admin chose that is a link itself
/// (/dev/disk/by-id/..., /dev/mapper/..., /dev/VG/LV).
pub fn stable_name(path: &Path) -> Option<std::path::PathBuf> {
    stable_name_in(Path::new(DEV_DISK), path)
}

/// [`stable_name`] with the /dev/disk tree at `root` (unit tests make one).
pub fn stable_name_in(root: &Path, path: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let target = std::fs::canonicalize(path).ok()?;
    if std::path::absolute(path).ok()? != target {
        return None;
    }
    for kind in STABLE_KINDS {
        let Ok(entries) = std::fs::read_dir(root.join(kind)) else {
            continue;
        };
        let mut names: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| std::fs::canonicalize(p).ok().as_ref() == Some(&target))
            .collect();
        // Deterministic, and a readable model_serial name before a wwn- one.
        names.sort_by_key(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (n.as_deref().is_some_and(|n| n.starts_with("wwn-")), n)
        });
        if let Some(first) = names.into_iter().next() {
            return Some(first);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A block device every test machine has.
    fn a_block_device() -> Option<std::path::PathBuf> {
        use std::os::unix::fs::FileTypeExt;
        ["/dev/loop0", "/dev/ram0", "/dev/vda", "/dev/sda"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
    }

    #[test]
    fn a_block_device_is_recorded_by_its_by_id_name_before_by_path_and_wwn() {
        let Some(dev) = a_block_device() else {
            panic!("no block device found (/dev/loop0 and others): run as root with loop devices (modprobe loop)");
        };
        let root = tempfile::tempdir().unwrap();
        for kind in ["by-id", "by-path", "by-uuid"] {
            std::fs::create_dir(root.path().join(kind)).unwrap();
        }
        symlink(&dev, root.path().join("by-path/pci-0000:00:04.0")).unwrap();
        symlink(&dev, root.path().join("by-uuid/1234")).unwrap();
        assert_eq!(
            stable_name_in(root.path(), &dev),
            Some(root.path().join("by-path/pci-0000:00:04.0"))
        );
        symlink(&dev, root.path().join("by-id/wwn-0x5000")).unwrap();
        symlink(&dev, root.path().join("by-id/ata-DISK_SERIAL")).unwrap();
        symlink("/dev/null", root.path().join("by-id/ata-OTHER")).unwrap();
        assert_eq!(
            stable_name_in(root.path(), &dev),
            Some(root.path().join("by-id/ata-DISK_SERIAL"))
        );
        // Given by a name that is a link (a stable name, /dev/mapper): kept as given.
        let given = root.path().join("by-id/wwn-0x5000");
        assert_eq!(stable_name_in(root.path(), &given), None);
    }

    #[test]
    fn a_regular_file_or_a_device_without_stable_names_has_none() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("img");
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir(root.path().join("by-id")).unwrap();
        symlink(&file, root.path().join("by-id/file-link")).unwrap();
        assert_eq!(stable_name_in(root.path(), &file), None);
        if let Some(dev) = a_block_device() {
            assert_eq!(stable_name_in(root.path(), &dev), None);
        }
        assert_eq!(stable_name_in(root.path(), Path::new("/nonexistent")), None);
    }
}
