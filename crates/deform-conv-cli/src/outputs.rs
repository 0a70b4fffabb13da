//! The files one command writes: all of them or none, and never over anything but a regular file.
//!
//! [`Outputs`] collects every file a command produces, checking each target as it comes: its
//! folder exists, it is absent or a regular file it may replace (never a symlink, device, FIFO,
//! socket or folder), and no two outputs name the same file (after the folder is resolved, so
//! `out/y.npy` and `./out/../out/y.npy` collide). [`Outputs::commit`] writes each file to a
//! temporary file created exclusively beside its target (`O_EXCL`: a planted symlink or file at
//! that name is never followed or reused), checks every target again, then renames them all into
//! place. A failure before the renames removes the temporary files and leaves every target as it
//! was.

use crate::npy::Save;
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array, Dimension};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The files one command writes, written together or not at all.
#[derive(Default)]
pub struct Outputs {
    files: Vec<Pending>,
}

struct Pending {
    path: PathBuf,
    /// The folder resolved (symlinks and `..` followed) joined with the file name: two outputs
    /// with the same key are the same file.
    key: PathBuf,
    bytes: Vec<u8>,
    note: String,
}

/// The folder `path` is written into; it must exist already (`--output` and `--grad-dir` alike).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` may be written: absent, or a regular file that is not read-only. Anything else (a
/// symlink, even to a regular file; a device; a FIFO; a socket; a folder) is refused.
fn check_target(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{}: cannot inspect the output ({e})", path.display()),
        Ok(m) => {
            let t = m.file_type();
            if t.is_file() {
                if m.permissions().readonly() {
                    bail!("{}: the output exists and is read-only", path.display());
                }
                return Ok(());
            }
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_dir() {
                "a folder"
            } else {
                special_kind(&t)
            };
            bail!(
                "{}: the output exists and is {what}, not a regular file; refusing to replace it",
                path.display()
            )
        }
    }
}

#[cfg(unix)]
fn special_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "not a regular file"
}

/// Creates a new temporary file beside `path`, exclusively (never an existing file or link).
fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0u32..64 {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{:x}.{attempt}.tmp", std::process::id(), stamp));
        let tmp = path.with_file_name(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => bail!("{}: cannot create a temporary file ({e})", path.display()),
        }
    }
    bail!(
        "{}: cannot create a temporary file (64 names taken)",
        path.display()
    )
}

impl Outputs {
    /// Adds an array to write to `path` as .npy (see [`Outputs::add_bytes`]).
    pub fn add<T: Save, D: Dimension>(&mut self, path: &Path, a: &Array<T, D>) -> Result<()> {
        let bytes = T::encode(a).with_context(|| path.display().to_string())?;
        self.add_bytes(path, bytes, format!("{:?}", a.shape()))
    }

    /// Adds `bytes` to write to `path`; `note` is printed after the path when written. The target
    /// is checked now: its folder exists, it is absent or a regular file, no other output names it.
    pub fn add_bytes(&mut self, path: &Path, bytes: Vec<u8>, note: String) -> Result<()> {
        let parent = parent_of(path);
        if !parent.is_dir() {
            bail!(
                "{}: the folder {} does not exist",
                path.display(),
                parent.display()
            );
        }
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?;
        let key = parent
            .canonicalize()
            .with_context(|| format!("{}: cannot resolve its folder", path.display()))?
            .join(name);
        if let Some(first) = self.files.iter().find(|p| p.key == key) {
            bail!(
                "{}: two outputs would be written to the same file (also {})",
                path.display(),
                first.path.display()
            );
        }
        check_target(path)?;
        self.files.push(Pending {
            path: path.to_path_buf(),
            key,
            bytes,
            note,
        });
        Ok(())
    }

    /// Writes every file through an exclusive temporary file beside it, checks every target
    /// again, then renames them all into place. On a failure before the renames, the temporary
    /// files are removed and no target is touched.
    pub fn commit(self) -> Result<()> {
        let mut temps: Vec<PathBuf> = Vec::new();
        let result = (|| -> Result<()> {
            for p in &self.files {
                let (tmp, f) = create_temp(&p.path)?;
                temps.push(tmp);
                let mut w = BufWriter::new(f);
                w.write_all(&p.bytes)
                    .and_then(|_| w.flush())
                    .with_context(|| format!("{}: cannot write", p.path.display()))?;
            }
            // The targets may have changed while the files were written.
            self.files.iter().try_for_each(|p| check_target(&p.path))
        })();
        let remove_all = |temps: &[PathBuf]| {
            for t in temps {
                let _ = std::fs::remove_file(t);
            }
        };
        if let Err(e) = result {
            remove_all(&temps);
            return Err(e);
        }
        for (i, (tmp, p)) in temps.iter().zip(&self.files).enumerate() {
            if let Err(e) = std::fs::rename(tmp, &p.path) {
                remove_all(&temps[i..]);
                return Err(anyhow!("{}: cannot write ({e})", p.path.display()));
            }
        }
        for p in &self.files {
            println!("wrote {} {}", p.path.display(), p.note);
        }
        Ok(())
    }
}
