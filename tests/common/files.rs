//! Files in a test's temporary directory.

use std::path::{Path, PathBuf};

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

/// Replaces `name` atomically (write a temp file, rename over), as deploy
/// tools and editors do.
pub fn replace_atomically(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, dir.join(name)).expect("rename into place");
}
