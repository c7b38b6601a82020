//! The files of a tightening: each changed policy file rewritten, with its
//! unified diff, at its path relative to the policies given.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use super::{
    rewrite::{Rewritten, rewrite_file},
    tighten::{PolicyTightening, Tightening},
    unified::unified,
};

/// A changed policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedFile {
    /// Its path relative to the policies given, `/`-separated.
    pub relative: String,
    /// The tightened text, and how it was made.
    pub rewritten: Rewritten,
    /// The unified diff from the original.
    pub diff: String,
}

/// `file` relative to `root` (the directory or file given as policies).
fn relative(root: &Path, file: &Path) -> String {
    let inside = file
        .strip_prefix(root)
        .ok()
        .filter(|rest| !rest.as_os_str().is_empty());
    let path = inside.unwrap_or_else(|| Path::new(file.file_name().unwrap_or(file.as_os_str())));
    path.components()
        .map(|part| part.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The files with a changed policy, in path order, rewritten.
pub fn proposed_files(root: &Path, tightening: &Tightening) -> Vec<ProposedFile> {
    let mut by_file: BTreeMap<&PathBuf, Vec<&PolicyTightening>> = BTreeMap::new();
    for policy in &tightening.policies {
        by_file.entry(&policy.file).or_default().push(policy);
    }
    by_file
        .into_iter()
        .filter(|(_, policies)| policies.iter().any(|policy| policy.changed()))
        .map(|(file, policies)| {
            // A file that cannot be read again is proposed whole.
            let original = std::fs::read_to_string(file).unwrap_or_default();
            let rewritten = rewrite_file(file, &original, &policies);
            let relative = relative(root, file);
            let diff = unified(&relative, &original, &rewritten.text);
            ProposedFile {
                relative,
                rewritten,
                diff,
            }
        })
        .collect()
}

/// Writes each file under `directory` at its relative path, and its diff
/// beside it as `PATH.diff`. Names the path that failed.
pub fn write_files(directory: &Path, files: &[ProposedFile]) -> Result<(), (PathBuf, io::Error)> {
    for file in files {
        let path = directory.join(&file.relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| (parent.to_owned(), error))?;
        }
        std::fs::write(&path, &file.rewritten.text).map_err(|error| (path.clone(), error))?;
        let diff = directory.join(format!("{}.diff", file.relative));
        std::fs::write(&diff, &file.diff).map_err(|error| (diff.clone(), error))?;
    }
    Ok(())
}
