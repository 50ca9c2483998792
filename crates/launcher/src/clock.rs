//! Wall clocks that can be stepped, through libfaketime.
//!
//! A process started with libfaketime preloaded reads its wall-clock offset
//! from a file of its own (`FAKETIME_TIMESTAMP_FILE`), at most a second old
//! (`FAKETIME_CACHE_DURATION=1`). Only the wall clock moves: the monotonic
//! clock stays true (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as on a host whose
//! NTP steps the time, so timers and timeouts keep their length.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{LaunchError, io};

/// Where Debian's `libfaketime` package puts the thread-safe library.
pub const DEFAULT_LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The clock files of a cluster's processes, and the library that reads them.
#[derive(Debug, Clone)]
pub struct FakeClocks {
    library: PathBuf,
    dir: PathBuf,
}

impl FakeClocks {
    /// Clocks shifted by `library` (libfaketime), with their files in `dir`.
    pub fn new(library: &Path, dir: &Path) -> Result<Self, LaunchError> {
        if !library.is_file() {
            return Err(LaunchError::Invalid(format!(
                "{} not found: clock faults need libfaketime (apt-get install faketime)",
                library.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Self {
            library: library.to_owned(),
            dir: dir.to_owned(),
        })
    }

    /// The environment that starts process `name` on its own clock; the clock
    /// keeps the offset it had if the process ran before (a restart does not
    /// fix a host's clock).
    pub fn env(&self, name: &str) -> Result<BTreeMap<String, String>, LaunchError> {
        let file = self.file(name);
        if !file.exists() {
            self.set_offset(name, 0.0)?;
        }
        Ok(BTreeMap::from([
            ("LD_PRELOAD".to_owned(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_owned(),
                file.display().to_string(),
            ),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
            ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
        ]))
    }

    /// Sets how far process `name`'s wall clock is ahead of the true time (behind
    /// when negative); the process sees it within about a second.
    pub fn set_offset(&self, name: &str, seconds: f64) -> Result<(), LaunchError> {
        if !seconds.is_finite() {
            return Err(LaunchError::Invalid(format!(
                "clock offset {seconds} is not a number of seconds"
            )));
        }
        let file = self.file(name);
        // Written beside the file and renamed over it, so that libfaketime never
        // reads half a line.
        let partial = self.dir.join(format!(".{name}.partial"));
        let mut out = std::fs::File::create(&partial)
            .map_err(io(format!("writing {}", partial.display())))?;
        writeln!(out, "{seconds:+.3}").map_err(io(format!("writing {}", partial.display())))?;
        std::fs::rename(&partial, &file).map_err(io(format!("writing {}", file.display())))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_written_whole_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let library = dir.path().join("libfaketime.so");
        std::fs::write(&library, b"").expect("library stand-in");
        let clocks = FakeClocks::new(&library, &dir.path().join("clocks")).expect("clocks");
        let env = clocks.env("router-1").expect("env");
        let file = dir.path().join("clocks/router-1");
        let offset = || -> f64 {
            std::fs::read_to_string(&file)
                .expect("file")
                .trim()
                .parse()
                .expect("an offset")
        };
        assert_eq!(offset(), 0.0);
        assert_eq!(env["FAKETIME_DONT_FAKE_MONOTONIC"], "1");
        clocks.set_offset("router-1", -2.5).expect("step back");
        let text = std::fs::read_to_string(&file).expect("file");
        assert_eq!(text, "-2.500\n");
        clocks.env("router-1").expect("restart");
        assert_eq!(offset(), -2.5, "kept");
        assert!(clocks.set_offset("router-1", f64::NAN).is_err());
        assert!(FakeClocks::new(&dir.path().join("missing.so"), dir.path()).is_err());
    }
}
